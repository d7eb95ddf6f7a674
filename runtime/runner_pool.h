// RunnerPool: admission control in front of one model container.
//
// AOTInductor's container runs at most `num_runners` calls at once and makes
// any extra caller wait on its internal shared_mutex, which starves the
// exclusive lock that a weight swap needs (see shared/notes/aoti-runtime.md).
// The pool therefore owns admission: never more than `num_runners` calls are
// inside the container, excess requests wait in a bounded FIFO queue here, and
// Pause()/RunExclusive() can stop dispatch, wait for in-flight calls and run
// something (a weight swap) with the container idle.
//
// The pool is generic: a request is a `Work` closure that is executed while a
// runner slot is held. It knows nothing about tensors or LibTorch.
//
// Thread-safety: every public method may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "common/status.h"

namespace pt2serve {

using Clock = std::chrono::steady_clock;
// Absolute deadline; Clock::time_point::max() means none.
using Deadline = Clock::time_point;
inline constexpr Deadline kNoDeadline = Deadline::max();

struct RunnerPoolOptions {
  size_t num_runners = 1;
  // Requests allowed to wait for a runner; more are rejected with
  // RESOURCE_EXHAUSTED. 0 means callers never wait.
  size_t max_queue_size = 64;
};

// Time a request spent waiting for a runner and running on it.
struct RequestTiming {
  std::chrono::nanoseconds queue{0};
  std::chrono::nanoseconds compute{0};
};

struct RunnerPoolStats {
  uint64_t queued = 0;         // waiting now
  uint64_t in_flight = 0;      // running now
  uint64_t max_in_flight = 0;  // peak of in_flight since creation
  uint64_t completed = 0;      // work returned OK
  uint64_t failed = 0;         // work returned an error
  uint64_t rejected = 0;       // queue full or pool shut down
  uint64_t expired = 0;        // deadline passed while queued
  uint64_t cancelled = 0;      // removed by Cancel()
  uint64_t queue_ns = 0;       // total time admitted requests waited
  uint64_t compute_ns = 0;     // total time inside Work
};

class RunnerPool {
 public:
  // Runs with a runner slot held; its Status is the request's result.
  using Work = std::function<Status()>;
  // Called exactly once per submitted request with its outcome.
  using Done = std::function<void(const Status&, const RequestTiming&)>;
  using Ticket = uint64_t;

  explicit RunnerPool(RunnerPoolOptions options);
  // Shuts down (see Shutdown) and joins the pool's threads.
  ~RunnerPool();
  RunnerPool(const RunnerPool&) = delete;
  RunnerPool& operator=(const RunnerPool&) = delete;

  // Runs `work` on the calling thread once a runner is free, in FIFO order
  // with every other request. Blocks. Returns RESOURCE_EXHAUSTED when the
  // queue is full, DEADLINE_EXCEEDED when the deadline passes while waiting,
  // UNAVAILABLE after Shutdown, otherwise what `work` returned.
  Status Run(const Work& work, Deadline deadline = kNoDeadline,
             RequestTiming* timing = nullptr);

  // Queues `work` to run on one of the pool's own threads and returns at
  // once. `done` runs exactly once: inline when the request is rejected, on
  // the pool's threads otherwise. `done` must not block for long.
  Ticket Submit(Work work, Deadline deadline, Done done);

  // Removes a request that is still queued; its `done` gets CANCELLED.
  // Returns false when it already started or finished.
  bool Cancel(Ticket ticket);

  // Runs `fn` while no request is inside the container: stops dispatch,
  // waits for in-flight work, runs `fn`, resumes. Queued requests keep their
  // places and their deadlines keep running. Exclusive sections are
  // serialized with each other.
  Status RunExclusive(const std::function<Status()>& fn);

  // Rejects new requests with UNAVAILABLE, fails the queued ones with
  // UNAVAILABLE and waits for in-flight work. Idempotent.
  void Shutdown();

  RunnerPoolStats stats() const;
  size_t num_runners() const { return options_.num_runners; }

 private:
  enum class WaiterState { kQueued, kGranted, kFinished };
  struct Waiter {
    Ticket ticket = 0;
    Deadline deadline = kNoDeadline;
    Clock::time_point enqueued;
    WaiterState state = WaiterState::kQueued;
    Status result;                          // set when it leaves the queue unserved
    std::condition_variable* cv = nullptr;  // sync waiters only
    Work work;                              // async waiters only
    Done done;                              // async waiters only
  };

  // Admits the caller now if a runner is free and nobody waits.
  bool TryAdmitLocked();
  // Hands free runners to queued requests in FIFO order.
  void DispatchLocked(std::vector<Waiter*>& finished);
  // Removes queued requests whose deadline passed.
  void ExpireLocked(Clock::time_point now, std::vector<Waiter*>& finished);
  void ReleaseRunner(const RequestTiming& timing, bool ok);
  // Calls `done` of requests that left the queue unserved; outside the lock.
  void Finish(const std::vector<Waiter*>& finished);
  void WorkerLoop();
  void ReaperLoop();

  const RunnerPoolOptions options_;
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;    // in_flight_ reached 0
  std::condition_variable worker_cv_;  // ready_ gained an entry or stopping_
  std::condition_variable reaper_cv_;  // earlier deadline queued or stopping_
  std::mutex exclusive_mu_;            // serializes RunExclusive
  // Guarded by mu_:
  std::list<Waiter*> queue_;  // FIFO; owned by the waiting thread (sync) or heap (async)
  std::list<Waiter*> ready_;  // async requests holding a runner, not yet picked up
  size_t in_flight_ = 0;      // runner slots held (running or in ready_)
  bool paused_ = false;
  bool stopping_ = false;
  Ticket next_ticket_ = 1;
  Deadline reaper_wake_ = kNoDeadline;
  RunnerPoolStats stats_;
  std::vector<std::thread> workers_;
  std::thread reaper_;
};

}  // namespace pt2serve
