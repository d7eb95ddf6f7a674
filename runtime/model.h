// Model: a loaded package behind its RunnerPool; what requests run against.
//
// Torch-free header: the server layer talks to models only through this.
// Thread-safety: all methods may be called concurrently. Infer/InferAsync
// validate inputs on the calling thread before queueing, so a bad request
// never takes a runner.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "runtime/dynamic_batcher.h"
#include "runtime/package_info.h"
#include "runtime/replica.h"
#include "runtime/runner_pool.h"

namespace pt2serve {

class ConstantBufferManager;
class Replica;
class StagingBudget;

// Largest ModelConfig::cpu_threads accepted.
inline constexpr int kMaxCpuThreads = 1024;

// Where a model's container runs; see docs/containment.md.
enum class Isolation {
  // In the daemon: fastest. A request that makes a kernel abort the process
  // (e.g. an out-of-range embedding index on CPU) takes the daemon down.
  kInProcess,
  // In a pt2serve-worker child process per replica: a crash fails the
  // requests inside it and the worker restarts with the same weights; the
  // daemon and other models are unaffected. Costs an IPC round trip and a
  // copy of inputs and outputs per request.
  kProcess,
};
std::string_view IsolationName(Isolation isolation);  // "in_process", "process"
std::optional<Isolation> IsolationFromName(std::string_view name);

// Dynamic batching of a model's asynchronous requests (InferAsync, the
// daemon's path); see runtime/dynamic_batcher.h and docs/batching.md.
struct BatchingConfig {
  bool enabled = false;
  // Rows per batch; 0 = the package's batch limit (Signature::max_batch_size).
  int64_t max_batch_size = 0;
  std::chrono::microseconds max_queue_delay{0};
  std::vector<int64_t> preferred_batch_sizes;
  bool preserve_ordering = false;
  // 0 or 1 = no priorities. With N levels requests name 1..N (1 first).
  uint32_t priority_levels = 0;
  uint32_t default_priority_level = 0;  // 0 = the middle level
  // Requests allowed to wait per level; empty = ModelConfig::max_queue_size
  // for every level.
  std::vector<size_t> priority_queue_sizes;
};

// Limits of a batching config (checked at load).
inline constexpr uint32_t kMaxPriorityLevels = 64;
inline constexpr std::chrono::microseconds kMaxQueueDelay = std::chrono::seconds(10);

struct ModelConfig {
  std::string name;
  std::string path;              // the .pt2 file
  // "auto" = the package's own device; or a list "cuda:0,cuda:1" to place
  // one replica of the model on each device, requests spread across them.
  std::string device = "auto";
  size_t num_runners = 1;        // per device
  size_t max_queue_size = 64;
  // Deadline applied to requests that carry none; 0 = no deadline.
  std::chrono::milliseconds default_timeout{0};
  // Label reported for the weights the package was compiled with.
  std::string initial_weights_version = "initial";
  // Intra-op (OpenMP) threads each runner's CPU work uses, set on the
  // model's pool threads, which run InferAsync requests (the daemon's path);
  // Infer() runs on the caller's thread with the caller's setting. 0 = the
  // process default (OMP_NUM_THREADS, or one per physical core). See
  // devices/cpu_threads.h.
  int cpu_threads = 0;
  Isolation isolation = Isolation::kInProcess;
  // Inputs/outputs declared by the config (names, dtypes, shapes, max
  // batch); checked against the package at load. Unset: the package's own.
  std::optional<Signature> signature = std::nullopt;
  BatchingConfig batching = {};
  // Most memory a weight push may hold on top of the active weights (its
  // upload buffers plus the inactive constant buffer); a push needing more
  // is refused at its header. 0 = no per-model limit.
  size_t weights_staging_budget_bytes = 0;
};

struct InferRequest {
  std::string id;
  std::vector<Tensor> inputs;            // by name, any order
  std::vector<std::string> outputs;      // requested by name; empty = all
  Deadline deadline = kNoDeadline;
  // Dynamic batching only: 1..priority_levels (1 served first); 0 = the
  // model's default level.
  uint32_t priority = 0;
};

struct InferResponse {
  std::string id;
  std::vector<Tensor> outputs;  // requested order, or signature order
  std::string weights_version;  // the weights that computed these outputs
  RequestTiming timing;
  // Rows of the container call that computed this response (the formed
  // batch, or the request's own batch when it ran alone).
  int64_t batch_rows = 1;
  // True for exactly one response per container call: the one that
  // accounts for the execution in statistics.
  bool counts_execution = true;
};

class Model {
 public:
  using InferDone = std::function<void(StatusOr<InferResponse>)>;

  // Loads the package and starts its pool. `staging_budget`: the
  // server-wide budget weight pushes of every model draw from (null: none).
  static StatusOr<std::shared_ptr<Model>> Load(
      const ModelConfig& config, std::shared_ptr<StagingBudget> staging_budget = nullptr);
  // Shuts the pool down (queued requests fail with UNAVAILABLE, in-flight
  // ones finish), then destroys the container.
  ~Model();

  const ModelConfig& config() const { return config_; }
  // The first replica's package (all replicas load the same file).
  const PackageInfo& info() const;
  const Signature& signature() const;
  // "cpu", "cuda:0", or "cuda:0,cuda:1" for a model placed on several devices.
  std::string devices() const;
  std::vector<DeviceSpec> device_specs() const;  // one per replica

  // Validates, waits for a runner and runs on the calling thread. Never
  // batched (tools and tests use it to run one request as it is).
  StatusOr<InferResponse> Infer(const InferRequest& request);

  // Validates on the calling thread (calling `done` inline on error), then
  // runs on a pool thread and calls `done` there. Inputs' owners are kept
  // alive until `done` returns. Returns a ticket for CancelQueued().
  RunnerPool::Ticket InferAsync(InferRequest request, InferDone done);
  // Drops a request that has not started (e.g. the client went away).
  bool CancelQueued(RunnerPool::Ticket ticket);

  // The batcher of a model with dynamic batching, else null.
  const DynamicBatcher* batcher() const { return batcher_.get(); }

  std::string weights_version() const;
  // Weight hot-swap (stage/swap/rollback/free) for this model; include
  // runtime/constant_buffer_manager.h to use it.
  ConstantBufferManager& weights() { return *weights_; }
  RunnerPool& pool() { return *pool_; }
  // One loaded package per device; runner slot i runs on replica
  // i % replicas().size() (its slot i / replicas().size()). Weight
  // operations apply to every replica.
  const std::vector<std::unique_ptr<Replica>>& replicas() const { return replicas_; }

  // SERVING unless a replica is restarting its worker or failed for good;
  // the reason names the replica's problem.
  Availability availability() const;
  std::string availability_reason() const;
  // Worker restarts over all replicas (process isolation).
  uint64_t restarts() const;
  // Called after the availability may have changed (a worker died or came
  // back, an in-process device failed), on the thread that noticed it.
  // Set once after Load, before requests.
  void SetAvailabilityListener(std::function<void()> listener);

  // Sets the label reported for the active weights. REQUIRES: called inside
  // pool().RunExclusive(), together with the buffer swap it describes.
  void SetWeightsVersionLocked(std::string version);

 private:
  Model(ModelConfig config, std::vector<std::unique_ptr<Replica>> replicas,
        std::optional<BatcherOptions> batching, std::shared_ptr<StagingBudget> staging_budget);
  // Maps named inputs to signature order and validates them; also resolves
  // requested outputs to indices.
  Status Prepare(const InferRequest& request, std::vector<const Tensor*>& ordered,
                 std::vector<int>& output_indices) const;
  // Runs with runner slot `runner` held, on its replica.
  Status Execute(size_t runner, const std::vector<const Tensor*>& inputs,
                 const std::vector<int>& output_indices, InferResponse& response,
                 Deadline deadline);
  Deadline EffectiveDeadline(Deadline requested) const;
  // Checks config.batching against the package's signature (a load error
  // names the reason) and turns it into the batcher's options.
  static StatusOr<BatcherOptions> BatcherOptionsFor(const ModelConfig& config,
                                                    const Signature& sig, size_t runners);
  // Runs a formed batch (DynamicBatcher's executor).
  void RunBatch(const DynamicBatcher::Batch& batch, size_t runner);
  // InferAsync: whether this request (or, with batching, the batch it makes
  // ready) may run on the caller's thread when a runner is free
  // (RunnerPool::SubmitOrRunHere). Only for in-process CPU models whose calls
  // are short (running mean of the compute time, per call or per batch, <=
  // kRunHereMaxCompute), and one such call at a time, so model work never
  // holds more than one of the daemon's RPC threads. On true the caller
  // resets run_here_busy_ once the call has returned.
  bool ClaimRunHere();
  void RecordCompute(std::chrono::nanoseconds compute);

  const ModelConfig config_;
  std::vector<std::unique_ptr<Replica>> replicas_;  // one per device
  std::unique_ptr<RunnerPool> pool_;  // destroyed before replicas_
  // Null without dynamic batching. Shut down before pool_, destroyed after
  // it (in-flight batches deliver through it).
  std::unique_ptr<DynamicBatcher> batcher_;
  std::mutex listener_mu_;
  std::function<void()> listener_;  // guarded by listener_mu_
  mutable std::mutex version_mu_;
  std::string weights_version_;  // guarded by version_mu_
  // Constructed last, destroyed first (it uses replicas_ and pool_).
  std::unique_ptr<ConstantBufferManager> weights_;
  // Running-on-the-caller policy (ClaimRunHere). run_here_ is fixed at load;
  // the mean is an exponential moving average over completed async calls
  // (-1 until the first one), updated with relaxed racy read-modify-writes:
  // an estimate, never a correctness input.
  bool run_here_ = false;
  std::atomic<bool> run_here_busy_{false};
  std::atomic<int64_t> mean_compute_ns_{-1};
};

// Calls at most this long on average may run on the caller's thread.
inline constexpr std::chrono::microseconds kRunHereMaxCompute{200};

}  // namespace pt2serve
