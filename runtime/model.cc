#include "runtime/model.h"

#include <set>

#include "runtime/constant_buffer_manager.h"
#include "runtime/model_package.h"
#include "devices/cpu_threads.h"
#include "devices/device_executor.h"

namespace pt2serve {

StatusOr<std::shared_ptr<Model>> Model::Load(const ModelConfig& config) {
  if (config.cpu_threads < 0 || config.cpu_threads > kMaxCpuThreads) {
    return InvalidArgument("cpu_threads must be in 0.." + std::to_string(kMaxCpuThreads) +
                           " (0 = the process default), got " +
                           std::to_string(config.cpu_threads));
  }
  // Read the process default before any pool thread changes its own count.
  DefaultCpuThreads();
  PT2_ASSIGN_OR_RETURN(std::vector<std::string> devices, SplitDeviceList(config.device));
  const size_t total = config.num_runners * devices.size();
  if (config.num_runners == 0 || total > kMaxRunners) {
    return InvalidArgument("num_runners must be 1.." + std::to_string(kMaxRunners) +
                           " in total over all devices (got " +
                           std::to_string(config.num_runners) + " on each of " +
                           std::to_string(devices.size()) + ")");
  }
  std::vector<std::unique_ptr<ModelPackage>> replicas;
  for (const std::string& device : devices) {
    ModelPackage::Options options;
    options.path = config.path;
    options.device = device;
    options.num_runners = config.num_runners;
    options.declared_signature = config.signature;
    PT2_ASSIGN_OR_RETURN(auto package, ModelPackage::Load(options));
    if (!replicas.empty() && package->info().device == replicas.front()->info().device) {
      return InvalidArgument("device list '" + config.device + "' names " +
                             package->info().device.ToString() + " twice");
    }
    replicas.push_back(std::move(package));
  }
  // Slot i runs on replica i % D, so the low slots the pool hands out first
  // alternate between devices and light load spreads too.
  std::vector<std::unique_ptr<DeviceExecutor>> executors;
  for (size_t i = 0; i < total; ++i) {
    PT2_ASSIGN_OR_RETURN(auto executor,
                         DeviceExecutor::Create(replicas[i % replicas.size()]->info().device));
    executors.push_back(std::move(executor));
  }
  return std::shared_ptr<Model>(new Model(config, std::move(replicas), std::move(executors)));
}

Model::Model(ModelConfig config, std::vector<std::unique_ptr<ModelPackage>> replicas,
             std::vector<std::unique_ptr<DeviceExecutor>> executors)
    : config_(std::move(config)),
      replicas_(std::move(replicas)),
      executors_(std::move(executors)),
      pool_(std::make_unique<RunnerPool>(RunnerPoolOptions{
          executors_.size(), config_.max_queue_size,
          [threads = config_.cpu_threads] { SetThisThreadCpuThreads(threads); }})),
      weights_version_(config_.initial_weights_version),
      weights_(std::make_unique<ConstantBufferManager>(*this)) {}

Model::~Model() {
  weights_.reset();
  pool_.reset();  // joins pool threads: nothing runs once the replicas go
  executors_.clear();
  replicas_.clear();  // explicitly, in this order: never from a static destructor
}

const PackageInfo& Model::info() const { return replicas_.front()->info(); }
const Signature& Model::signature() const { return replicas_.front()->info().signature; }

std::vector<DeviceSpec> Model::device_specs() const {
  std::vector<DeviceSpec> out;
  for (const auto& r : replicas_) out.push_back(r->info().device);
  return out;
}

std::string Model::devices() const {
  std::string out;
  for (const auto& r : replicas_) out += (out.empty() ? "" : ",") + r->info().device.ToString();
  return out;
}

std::string Model::weights_version() const {
  std::lock_guard lock(version_mu_);
  return weights_version_;
}

void Model::SetWeightsVersionLocked(std::string version) {
  std::lock_guard lock(version_mu_);
  weights_version_ = std::move(version);
}

Deadline Model::EffectiveDeadline(Deadline requested) const {
  if (config_.default_timeout.count() <= 0) return requested;
  return std::min(requested, Clock::now() + config_.default_timeout);
}

Status Model::Prepare(const InferRequest& request, std::vector<const Tensor*>& ordered,
                      std::vector<int>& output_indices) const {
  const Signature& sig = signature();
  ordered.assign(sig.inputs.size(), nullptr);
  for (const Tensor& t : request.inputs) {
    int idx = sig.InputIndex(t.name);
    if (idx < 0) {
      return InvalidArgument("model '" + config_.name + "' has no input named '" + t.name + "'");
    }
    if (ordered[idx]) return InvalidArgument("input '" + t.name + "' given more than once");
    PT2_RETURN_IF_ERROR(ValidateAgainstSpec(t, sig.inputs[idx]));
    ordered[idx] = &t;
  }
  for (size_t i = 0; i < ordered.size(); ++i) {
    if (!ordered[i]) {
      return InvalidArgument("model '" + config_.name + "' expects " +
                             std::to_string(sig.inputs.size()) + " inputs; missing input '" +
                             sig.inputs[i].name + "'");
    }
  }
  if (sig.max_batch_size > 0) {
    const int64_t batch = ordered[0]->shape.empty() ? 0 : ordered[0]->shape[0];
    for (const Tensor* t : ordered) {
      if (t->shape.empty() || t->shape[0] != batch) {
        return InvalidArgument("inputs disagree on the batch size (input '" + t->name +
                               "' has shape " + ShapeToString(t->shape) + ")");
      }
    }
    if (batch < 1 || batch > sig.max_batch_size) {
      return InvalidArgument("batch size " + std::to_string(batch) + " is outside 1.." +
                             std::to_string(sig.max_batch_size));
    }
  }
  PT2_RETURN_IF_ERROR(CheckSharedDims(sig, ordered));
  output_indices.clear();
  std::set<std::string> seen;
  for (const auto& name : request.outputs) {
    int idx = sig.OutputIndex(name);
    if (idx < 0) {
      return InvalidArgument("model '" + config_.name + "' has no output named '" + name + "'");
    }
    if (!seen.insert(name).second) {
      return InvalidArgument("output '" + name + "' requested more than once");
    }
    output_indices.push_back(idx);
  }
  if (output_indices.empty()) {
    for (size_t i = 0; i < sig.outputs.size(); ++i) output_indices.push_back(static_cast<int>(i));
  }
  return Status::Ok();
}

Status Model::Execute(size_t runner, const std::vector<const Tensor*>& inputs,
                      const std::vector<int>& output_indices, InferResponse& response) {
  ModelPackage& replica = *replicas_[runner % replicas_.size()];
  const PackageInfo& info = replica.info();
  DeviceExecutor& executor = *executors_[runner];
  PT2_ASSIGN_OR_RETURN(auto args, executor.Upload(inputs));
  // Read under the runner slot: swaps happen only with no request inside, so
  // this is the version of the weights this call uses.
  response.weights_version = weights_version();
  PT2_ASSIGN_OR_RETURN(auto results, executor.RunOn([&](void* stream) {
                         return replica.Run(args, stream);
                       }));
  if (results.size() != info.signature.outputs.size()) {
    return Internal("model returned " + std::to_string(results.size()) +
                    " outputs, signature declares " +
                    std::to_string(info.signature.outputs.size()));
  }
  response.outputs.clear();
  for (int idx : output_indices) {
    PT2_ASSIGN_OR_RETURN(Tensor out,
                         executor.Download(results[idx], info.signature.outputs[idx].name));
    response.outputs.push_back(std::move(out));
  }
  // Requested-away outputs may still be in flight on the stream; the runner
  // is released only once nothing it queued is pending.
  if (output_indices.size() < results.size()) PT2_RETURN_IF_ERROR(executor.Synchronize());
  return Status::Ok();
}

StatusOr<InferResponse> Model::Infer(const InferRequest& request) {
  std::vector<const Tensor*> ordered;
  std::vector<int> output_indices;
  PT2_RETURN_IF_ERROR(Prepare(request, ordered, output_indices));
  InferResponse response;
  response.id = request.id;
  PT2_RETURN_IF_ERROR(pool_->Run(
      [&](size_t runner) { return Execute(runner, ordered, output_indices, response); },
      EffectiveDeadline(request.deadline), &response.timing));
  return response;
}

RunnerPool::Ticket Model::InferAsync(InferRequest request, InferDone done) {
  struct Call {
    InferRequest request;
    std::vector<const Tensor*> ordered;  // point into request.inputs
    std::vector<int> output_indices;
    InferResponse response;
  };
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  Status valid = Prepare(call->request, call->ordered, call->output_indices);
  if (!valid.ok()) {
    done(valid);
    return 0;
  }
  call->response.id = call->request.id;
  const Deadline deadline = EffectiveDeadline(call->request.deadline);
  return pool_->Submit(
      [this, call](size_t runner) {
        return Execute(runner, call->ordered, call->output_indices, call->response);
      },
      deadline,
      [call, done = std::move(done)](const Status& status, const RequestTiming& timing) {
        if (!status.ok()) {
          done(status);
          return;
        }
        call->response.timing = timing;
        done(std::move(call->response));
      });
}

}  // namespace pt2serve
