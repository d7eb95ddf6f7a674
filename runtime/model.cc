#include "runtime/model.h"

#include <algorithm>
#include <numeric>
#include <set>

#include "devices/cpu_threads.h"
#include "runtime/batch_assembler.h"
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

StatusOr<std::shared_ptr<Model>> Model::Load(const ModelConfig& config,
                                             std::shared_ptr<StagingBudget> staging_budget) {
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
  std::optional<BatcherOptions> batching;
  if (config.batching.enabled) {
    PT2_ASSIGN_OR_RETURN(batching, BatcherOptionsFor(config, replicas.front()->info().signature,
                                                     total));
  }
  return std::shared_ptr<Model>(new Model(config, std::move(replicas), std::move(batching),
                                          std::move(staging_budget)));
}

StatusOr<BatcherOptions> Model::BatcherOptionsFor(const ModelConfig& config,
                                                  const Signature& sig, size_t runners) {
  const BatchingConfig& b = config.batching;
  const std::string where = "dynamic batching for model '" + config.name + "': ";
  if (sig.max_batch_size <= 0) {
    return InvalidArgument(where + "the package has no dynamic batch dimension (dim 0 of every "
                           "input must be dynamic); remove dynamic_batching or re-export the "
                           "model with a dynamic batch dim");
  }
  for (const TensorSpec& out : sig.outputs) {
    if (!out.shape.empty() && out.shape[0] != -1) {
      return InvalidArgument(where + "output '" + out.name + "' has a static dim 0 (" +
                             ShapeToString(out.shape) +
                             "), so outputs cannot be split back per request");
    }
  }
  BatcherOptions o;
  o.max_batch_size = b.max_batch_size > 0 ? b.max_batch_size : sig.max_batch_size;
  if (o.max_batch_size > sig.max_batch_size) {
    return InvalidArgument(where + "max_batch_size " + std::to_string(b.max_batch_size) +
                           " is larger than the package's batch limit " +
                           std::to_string(sig.max_batch_size));
  }
  if (o.max_batch_size > (int64_t{1} << 20)) {
    return InvalidArgument(where + "the package's batch dim is unbounded; set max_batch_size "
                           "(1.." + std::to_string(int64_t{1} << 20) + ")");
  }
  if (b.max_queue_delay.count() < 0 || b.max_queue_delay > kMaxQueueDelay) {
    return InvalidArgument(where + "max_queue_delay_us must be in 0.." +
                           std::to_string(kMaxQueueDelay.count()) + ", got " +
                           std::to_string(b.max_queue_delay.count()));
  }
  o.max_queue_delay = b.max_queue_delay;
  o.preferred_batch_sizes = b.preferred_batch_sizes;
  std::sort(o.preferred_batch_sizes.begin(), o.preferred_batch_sizes.end());
  for (size_t i = 0; i < o.preferred_batch_sizes.size(); ++i) {
    const int64_t p = o.preferred_batch_sizes[i];
    if (p < 1 || p > o.max_batch_size || (i > 0 && p == o.preferred_batch_sizes[i - 1])) {
      return InvalidArgument(where + "preferred_batch_sizes must be distinct values in 1.." +
                             std::to_string(o.max_batch_size) + " (max_batch_size), got " +
                             std::to_string(p));
    }
  }
  o.preserve_ordering = b.preserve_ordering;
  if (b.priority_levels > kMaxPriorityLevels) {
    return InvalidArgument(where + "priority_levels must be in 0.." +
                           std::to_string(kMaxPriorityLevels) + ", got " +
                           std::to_string(b.priority_levels));
  }
  o.priority_levels = std::max<uint32_t>(b.priority_levels, 1);
  o.default_priority_level =
      b.default_priority_level == 0 ? (o.priority_levels + 1) / 2 : b.default_priority_level;
  if (o.default_priority_level > o.priority_levels) {
    return InvalidArgument(where + "default_priority_level " +
                           std::to_string(b.default_priority_level) + " is not one of the " +
                           std::to_string(o.priority_levels) + " priority levels");
  }
  if (b.priority_queue_sizes.empty()) {
    o.max_queue_size.assign(o.priority_levels, config.max_queue_size);
  } else if (b.priority_queue_sizes.size() != o.priority_levels) {
    return InvalidArgument(where + "priority_queue_sizes has " +
                           std::to_string(b.priority_queue_sizes.size()) +
                           " entries for " + std::to_string(o.priority_levels) +
                           " priority levels");
  } else {
    o.max_queue_size = b.priority_queue_sizes;
  }
  o.max_batches_in_flight = runners;
  return o;
}

Model::Model(ModelConfig config, std::vector<std::unique_ptr<Replica>> replicas,
             std::optional<BatcherOptions> batching,
             std::shared_ptr<StagingBudget> staging_budget)
    : config_(std::move(config)),
      replicas_(std::move(replicas)),
      // With batching the batcher holds the request queue; the pool's queue
      // only needs room for the batches that wait out a swap.
      pool_(std::make_unique<RunnerPool>(RunnerPoolOptions{
          config_.num_runners * replicas_.size(),
          batching ? 2 * config_.num_runners * replicas_.size() : config_.max_queue_size,
          [threads = config_.cpu_threads] { SetThisThreadCpuThreads(threads); }})),
      weights_version_(config_.initial_weights_version),
      weights_(std::make_unique<ConstantBufferManager>(*this, std::move(staging_budget))) {
  run_here_ = replicas_.size() == 1 && info().device.kind == DeviceKind::kCpu &&
              config_.isolation == Isolation::kInProcess;
  if (batching) {
    batcher_ = std::make_unique<DynamicBatcher>(
        std::move(*batching), *pool_,
        [this](const DynamicBatcher::Batch& batch, size_t runner) { RunBatch(batch, runner); });
  }
}

Model::~Model() {
  weights_.reset();
  if (batcher_) batcher_->Shutdown();  // fails queued requests; batches in the pool still run
  pool_.reset();  // joins pool threads: nothing runs once the replicas go
  batcher_.reset();
  replicas_.clear();  // explicitly, in this order: never from a static destructor
}

bool Model::CancelQueued(RunnerPool::Ticket ticket) {
  return batcher_ ? batcher_->Cancel(ticket) : pool_->Cancel(ticket);
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

namespace {

// An asynchronous request on its way through the pool or the batcher.
struct AsyncCall {
  InferRequest request;
  std::vector<const Tensor*> ordered;  // point into request.inputs
  std::vector<int> output_indices;
  InferResponse response;
  Model::InferDone done;
};

}  // namespace

RunnerPool::Ticket Model::InferAsync(InferRequest request, InferDone done) {
  auto call = std::make_shared<AsyncCall>();
  call->request = std::move(request);
  Status valid = Prepare(call->request, call->ordered, call->output_indices);
  if (!valid.ok()) {
    done(valid);
    return 0;
  }
  call->response.id = call->request.id;
  const Deadline deadline = EffectiveDeadline(call->request.deadline);
  if (batcher_) {
    const BatcherOptions& o = batcher_->options();
    auto entry = std::make_shared<DynamicBatcher::Entry>();
    entry->rows = call->ordered[0]->shape[0];
    if (entry->rows > o.max_batch_size) {
      done(InvalidArgument("batch of " + std::to_string(entry->rows) +
                           " rows is larger than model '" + config_.name +
                           "''s max_batch_size " + std::to_string(o.max_batch_size)));
      return 0;
    }
    if (call->request.priority > o.priority_levels) {
      done(InvalidArgument("priority " + std::to_string(call->request.priority) +
                           " is not one of model '" + config_.name + "''s priority levels 1.." +
                           std::to_string(o.priority_levels) + " (0 = default)"));
      return 0;
    }
    entry->key = ShapeKey(call->ordered);
    entry->priority = call->request.priority;
    entry->deadline = deadline;
    entry->fail = [call](const Status& status) { call->done(status); };
    call->done = std::move(done);
    entry->payload = call;
    const bool here = ClaimRunHere();
    const uint64_t ticket = batcher_->Submit(std::move(entry), here);
    if (here) run_here_busy_.store(false, std::memory_order_release);
    return ticket;
  }
  call->response.batch_rows = signature().max_batch_size > 0 ? call->ordered[0]->shape[0] : 1;
  auto work = [this, call, deadline](size_t runner) {
    return Execute(runner, call->ordered, call->output_indices, call->response, deadline);
  };
  auto finish = [this, call, done = std::move(done)](const Status& status,
                                                     const RequestTiming& timing) {
    RecordCompute(timing.compute);
    if (!status.ok()) {
      done(status);
      return;
    }
    call->response.timing = timing;
    done(std::move(call->response));
  };
  if (!ClaimRunHere()) return pool_->Submit(std::move(work), deadline, std::move(finish));
  const RunnerPool::Ticket ticket =
      pool_->SubmitOrRunHere(std::move(work), deadline, std::move(finish));
  run_here_busy_.store(false, std::memory_order_release);
  return ticket;
}

bool Model::ClaimRunHere() {
  if (!run_here_) return false;
  const int64_t mean = mean_compute_ns_.load(std::memory_order_relaxed);
  if (mean < 0 || mean > std::chrono::nanoseconds(kRunHereMaxCompute).count()) return false;
  bool expected = false;
  return run_here_busy_.compare_exchange_strong(expected, true, std::memory_order_acquire);
}

void Model::RecordCompute(std::chrono::nanoseconds compute) {
  if (compute.count() <= 0) return;  // never ran (rejected, expired, cancelled)
  const int64_t x = compute.count();
  const int64_t mean = mean_compute_ns_.load(std::memory_order_relaxed);
  mean_compute_ns_.store(mean < 0 ? x : mean + (x - mean) / 8, std::memory_order_relaxed);
}

void Model::RunBatch(const DynamicBatcher::Batch& batch, size_t runner) {
  const auto start = Clock::now();
  // What a batch costs decides whether the next one may run on an RPC
  // thread (ClaimRunHere), whichever way this one ends.
  struct RecordOnExit {
    Model* model;
    Clock::time_point start;
    ~RecordOnExit() { model->RecordCompute(Clock::now() - start); }
  } record{this, start};
  std::vector<AsyncCall*> calls;
  std::vector<int64_t> rows;
  Deadline latest = Clock::time_point::min();
  for (const auto& entry : batch) {
    calls.push_back(static_cast<AsyncCall*>(entry->payload.get()));
    rows.push_back(entry->rows);
    latest = std::max(latest, entry->deadline);
  }
  const int64_t total_rows = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  auto reply = [&](size_t i, Status status) {
    DynamicBatcher::Entry& entry = *batch[i];
    if (status.ok()) {
      AsyncCall* call = calls[i];
      call->response.timing.queue = start - entry.enqueued;
      call->response.timing.compute = Clock::now() - start;
    }
    // The reply may run later (preserve_ordering): it keeps the call alive.
    batcher_->Deliver(entry, [call = std::static_pointer_cast<AsyncCall>(entry.payload),
                              status = std::move(status)] {
      if (status.ok()) {
        call->done(std::move(call->response));
      } else {
        call->done(status);
      }
    });
  };
  auto run_alone = [&](size_t i) {
    AsyncCall* call = calls[i];
    call->response.batch_rows = rows[i];
    call->response.counts_execution = true;
    reply(i, Execute(runner, call->ordered, call->output_indices, call->response,
                     batch[i]->deadline));
  };
  if (batch.size() == 1) {
    run_alone(0);
    return;
  }
  // One container call for the whole batch, all outputs; each request then
  // takes the outputs it asked for.
  std::vector<std::vector<const Tensor*>> per_request;
  for (AsyncCall* call : calls) per_request.push_back(call->ordered);
  const std::vector<Tensor> joined = ConcatRows(per_request);
  std::vector<const Tensor*> inputs;
  for (const Tensor& t : joined) inputs.push_back(&t);
  std::vector<int> all_outputs(signature().outputs.size());
  std::iota(all_outputs.begin(), all_outputs.end(), 0);
  InferResponse batched;
  Status status = Execute(runner, inputs, all_outputs, batched, latest);
  std::vector<std::vector<Tensor>> split;
  if (status.ok()) status = SplitRows(batched.outputs, rows, split);
  if (!status.ok()) {
    // One bad request (a value check, a kernel that aborts its worker) must
    // not fail the others that shared its batch: run each alone, once.
    for (size_t i = 0; i < batch.size(); ++i) run_alone(i);
    return;
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    InferResponse& response = calls[i]->response;
    response.weights_version = batched.weights_version;
    response.batch_rows = total_rows;
    response.counts_execution = i == 0;
    for (int index : calls[i]->output_indices) response.outputs.push_back(split[i][index]);
    reply(i, Status::Ok());
  }
}

}  // namespace pt2serve
