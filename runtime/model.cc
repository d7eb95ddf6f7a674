#include "runtime/model.h"

#include <set>

#include "devices/cpu_threads.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/local_replica.h"
#include "runtime/worker_replica.h"

namespace pt2serve {

std::string_view IsolationName(Isolation isolation) {
  return isolation == Isolation::kProcess ? "process" : "in_process";
}

std::optional<Isolation> IsolationFromName(std::string_view name) {
  if (name == "in_process") return Isolation::kInProcess;
  if (name == "process") return Isolation::kProcess;
  return std::nullopt;
}

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
  std::vector<std::unique_ptr<Replica>> replicas;
  for (const std::string& device : devices) {
    std::unique_ptr<Replica> replica;
    if (config.isolation == Isolation::kProcess) {
      WorkerOptions options;
      options.model_name = config.name;
      options.path = config.path;
      options.device = device;
      options.num_runners = config.num_runners;
      options.cpu_threads = config.cpu_threads;
      options.declared_signature = config.signature;
      PT2_ASSIGN_OR_RETURN(replica, WorkerReplica::Start(std::move(options)));
    } else {
      ModelPackage::Options options;
      options.path = config.path;
      options.device = device;
      options.num_runners = config.num_runners;
      options.declared_signature = config.signature;
      PT2_ASSIGN_OR_RETURN(replica, LocalReplica::Load(options));
    }
    if (!replicas.empty() && replica->info().device == replicas.front()->info().device) {
      return InvalidArgument("device list '" + config.device + "' names " +
                             replica->info().device.ToString() + " twice");
    }
    replicas.push_back(std::move(replica));
  }
  return std::shared_ptr<Model>(new Model(config, std::move(replicas)));
}

Model::Model(ModelConfig config, std::vector<std::unique_ptr<Replica>> replicas)
    : config_(std::move(config)),
      replicas_(std::move(replicas)),
      pool_(std::make_unique<RunnerPool>(RunnerPoolOptions{
          config_.num_runners * replicas_.size(), config_.max_queue_size,
          [threads = config_.cpu_threads] { SetThisThreadCpuThreads(threads); }})),
      weights_version_(config_.initial_weights_version),
      weights_(std::make_unique<ConstantBufferManager>(*this)) {}

Model::~Model() {
  weights_.reset();
  pool_.reset();  // joins pool threads: nothing runs once the replicas go
  replicas_.clear();  // explicitly, in this order: never from a static destructor
}

void Model::SetAvailabilityListener(std::function<void()> listener) {
  {
    std::lock_guard lock(listener_mu_);
    listener_ = listener;
  }
  for (const auto& replica : replicas_) {
    if (auto* worker = dynamic_cast<WorkerReplica*>(replica.get())) worker->SetListener(listener);
  }
}

Availability Model::availability() const {
  Availability worst = Availability::kServing;
  for (const auto& replica : replicas_) {
    const Availability a = replica->availability();
    if (a == Availability::kFailed) return a;
    if (a == Availability::kRestarting) worst = a;
  }
  return worst;
}

std::string Model::availability_reason() const {
  for (const auto& replica : replicas_) {
    if (replica->availability() != Availability::kServing) {
      return replica->info().device.ToString() + ": " + replica->availability_reason();
    }
  }
  return "";
}

uint64_t Model::restarts() const {
  uint64_t total = 0;
  for (const auto& replica : replicas_) total += replica->restarts();
  return total;
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
                      const std::vector<int>& output_indices, InferResponse& response,
                      Deadline deadline) {
  const size_t count = replicas_.size();
  Replica& replica = *replicas_[runner % count];
  // Read under the runner slot: swaps happen only with no request inside, so
  // this is the version of the weights this call uses.
  response.weights_version = weights_version();
  Status status = replica.Run(runner / count, inputs, output_indices, response.outputs, deadline);
  if (!status.ok() && replica.availability() == Availability::kFailed) {
    std::function<void()> listener;
    {
      std::lock_guard lock(listener_mu_);
      listener = listener_;
    }
    if (listener) listener();
  }
  return status;
}

StatusOr<InferResponse> Model::Infer(const InferRequest& request) {
  std::vector<const Tensor*> ordered;
  std::vector<int> output_indices;
  PT2_RETURN_IF_ERROR(Prepare(request, ordered, output_indices));
  InferResponse response;
  response.id = request.id;
  const Deadline deadline = EffectiveDeadline(request.deadline);
  PT2_RETURN_IF_ERROR(pool_->Run(
      [&](size_t runner) {
        return Execute(runner, ordered, output_indices, response, deadline);
      },
      deadline, &response.timing));
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
      [this, call, deadline](size_t runner) {
        return Execute(runner, call->ordered, call->output_indices, call->response, deadline);
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
