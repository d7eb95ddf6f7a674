// WorkerReplica: a Replica whose container runs in a child process
// (pt2serve-worker), so that a request that aborts the process (an exception
// escaping an OpenMP region of a generated kernel, a CUDA device-side
// assert, a segfault) takes down only that process, never the daemon.
//
// Data path: each runner slot has its own message channel and two shared
// memory arenas (inputs written by the daemon, outputs written by the
// worker), grown on demand; one request costs two socket messages and one
// copy of the inputs and of the outputs.
//
// Crash handling: a supervisor thread waits for the worker. When it dies,
// the requests inside it fail with INTERNAL naming the model and the
// worker's last words (the exception message, or the signal); requests that
// arrive meanwhile wait for the restart (up to their deadline). The
// supervisor starts a new worker (at once after a first crash; repeated
// crashes back off exponentially, 0.1 s doubling up to 5 s) and restores the
// weights: the daemon keeps a shared-memory copy of every weight set it
// wrote to the worker (the active one and the inactive one), and replays
// them so the new worker holds the same ACTIVE and INACTIVE sets as the old
// one. Versions are labels kept by ConstantBufferManager and do not change.
//
// Memory: besides the worker's own copy, the daemon holds one host copy of
// each weight set written through it (at most two), in shared memory.
//
// Thread-safety: see replica.h; availability() and restarts() may be called
// from any thread. The listener runs on the supervisor thread.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/replica.h"

namespace pt2serve {

class SharedMemory;

struct WorkerOptions {
  std::string model_name;   // for messages
  std::string path;         // the .pt2
  std::string device = "auto";
  size_t num_runners = 1;
  int cpu_threads = 0;      // see ModelConfig::cpu_threads
  std::optional<Signature> declared_signature;  // see ModelConfig::signature
  std::string executable;   // empty: WorkerExecutable()
};

// The pt2serve-worker binary: $PT2SERVE_WORKER, else the one next to this
// executable, else the one in the build tree.
std::string WorkerExecutable();

class WorkerReplica final : public Replica {
 public:
  // Starts the worker and waits until it has loaded the package; a load
  // error in the worker is returned as it happened there.
  static StatusOr<std::unique_ptr<WorkerReplica>> Start(WorkerOptions options);
  // Stops the worker (closing its channels; SIGKILL after 5 s).
  ~WorkerReplica() override;

  const PackageInfo& info() const override { return info_; }
  size_t num_runners() const override { return options_.num_runners; }
  Status Run(size_t slot, const std::vector<const Tensor*>& inputs,
             const std::vector<int>& output_indices, std::vector<Tensor>& outputs,
             Deadline deadline) override;
  Status WriteInactive(const std::vector<Tensor>& tensors) override;
  Status FoldConstants(bool inactive) override;
  Status SwapBuffers() override;
  Status FreeInactive() override;
  Availability availability() const override;
  std::string availability_reason() const override;
  uint64_t restarts() const override;

  // Called (on the supervisor thread) after every availability change.
  void SetListener(std::function<void()> listener);
  // The current worker's pid (0 while restarting); for tests and logs.
  pid_t pid() const;

 private:
  struct Process;
  enum class InactiveContent { kFresh, kWritten, kFreed };

  explicit WorkerReplica(WorkerOptions options);
  // Starts a worker and reads its hello. REQUIRES: weights_mu_ held when
  // called for a restart (the caller then restores).
  StatusOr<std::shared_ptr<Process>> Spawn();
  // Replays the weight sets into a fresh worker. REQUIRES: weights_mu_.
  Status Restore(Process& process);
  // Waits until a worker is serving (or `deadline`, or FAILED).
  StatusOr<std::shared_ptr<Process>> AwaitServing(Deadline deadline);
  // One control request and its reply. REQUIRES: weights_mu_.
  Status Call(Process& process, const nlohmann::json& request, const std::vector<int>& fds = {});
  // The status for a request that was inside `process` when it died.
  Status Died(Process& process, const std::string& during);
  // Writes `memory` (tensors described by `descs`) into the worker's
  // inactive buffer. REQUIRES: weights_mu_.
  Status SendWeights(Process& process, const SharedMemory& memory, const nlohmann::json& descs);
  void SupervisorLoop(std::shared_ptr<Process> first);
  // Calls the listener, outside mu_.
  void NotifyListener();
  // Waits for a worker to serve and takes weights_mu_ with it current.
  StatusOr<std::pair<std::unique_lock<std::mutex>, std::shared_ptr<Process>>> LockWeights();

  const WorkerOptions options_;
  PackageInfo info_;  // from the first worker's hello; constant afterwards

  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Guarded by mu_.
  std::shared_ptr<Process> process_;  // null while restarting
  Availability availability_ = Availability::kServing;
  std::string reason_;
  uint64_t restarts_ = 0;
  bool stopping_ = false;
  bool supervisor_done_ = false;
  std::function<void()> listener_;
  // The newest worker's pid, also while it is starting (for the destructor).
  std::atomic<pid_t> newest_pid_{0};

  // The weight sets the worker holds, for restores. Guarded by weights_mu_,
  // which every weight operation and a restore hold for their duration.
  std::mutex weights_mu_;
  struct WeightCopy {
    std::shared_ptr<SharedMemory> memory;
    std::shared_ptr<nlohmann::json> descs;
  };
  WeightCopy sides_[2];  // null memory: the package's compiled-in set
  int active_side_ = 0;
  InactiveContent inactive_ = InactiveContent::kFresh;

  std::thread supervisor_;
};

}  // namespace pt2serve
