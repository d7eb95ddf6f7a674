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

#include <atomic>
#include <chrono>
#include <memory>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <utility>
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

// At most this many runners per pool (admission uses a 64-bit mask).
inline constexpr size_t kMaxRunners = 64;

struct RunnerPoolOptions {
  RunnerPoolOptions(size_t runners = 1, size_t queue = 64, std::function<void()> init = {})
      : num_runners(runners), max_queue_size(queue), thread_init(std::move(init)) {}

  size_t num_runners = 1;  // 1..kMaxRunners (clamped)
  // Requests allowed to wait for a runner; more are rejected with
  // RESOURCE_EXHAUSTED. 0 means callers never wait.
  size_t max_queue_size = 64;
  // Runs once on each pool thread before it takes any work (per-thread
  // library settings, e.g. the intra-op thread count). Must not throw.
  std::function<void()> thread_init;
  // How long a synchronous waiter at the head of the queue lets arriving
  // callers take a free runner before it (see Run). Barging avoids a convoy
  // (every runner reserved for a thread that first has to be woken); the
  // window bounds how unfair it can get.
  std::chrono::microseconds barge_window{500};
  // Tests only: called by a synchronous waiter that was woken to compete for
  // a free runner, with no lock held, before it tries to take one. Lets a
  // test stand for a thread that the OS is slow to run. Must not throw.
  std::function<void()> on_poked_for_test;
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
  std::vector<uint64_t> completed_per_runner;  // completed, by runner slot
};

class RunnerPool {
 public:
  // Runs with a runner slot held; its Status is the request's result.
  // `runner` (0..num_runners-1) names the slot: no other request uses that
  // slot until this one returns, so per-runner state (a device stream,
  // staging buffers) indexed by it needs no locking.
  using Work = std::function<Status(size_t runner)>;
  // Called exactly once per submitted request with its outcome.
  using Done = std::function<void(const Status&, const RequestTiming&)>;
  using Ticket = uint64_t;

  explicit RunnerPool(RunnerPoolOptions options);
  // Shuts down (see Shutdown) and joins the pool's threads.
  ~RunnerPool();
  RunnerPool(const RunnerPool&) = delete;
  RunnerPool& operator=(const RunnerPool&) = delete;

  // Runs `work` on the calling thread once a runner is free. Blocks. Waiters
  // are served in FIFO order, except that a caller arriving while the
  // synchronous waiter at the head is less than options.barge_window (0.5 ms)
  // into its wait may take a free runner first (it is woken to compete; past
  // the window runners are handed to waiters strictly in order). Returns RESOURCE_EXHAUSTED when the
  // queue is full, DEADLINE_EXCEEDED when the deadline passes while waiting,
  // UNAVAILABLE after Shutdown, otherwise what `work` returned.
  Status Run(const Work& work, Deadline deadline = kNoDeadline,
             RequestTiming* timing = nullptr);

  // Queues `work` to run on one of the pool's own threads and returns at
  // once. `done` runs exactly once: inline when the request is rejected, on
  // the pool's threads otherwise. `done` must not block for long.
  Ticket Submit(Work work, Deadline deadline, Done done);

  // Like Submit, except that when a runner is free at once (nothing queued,
  // not paused) `work` and then `done` run on the calling thread before this
  // returns 0 (nothing left to cancel). Saves the hand-off to a pool thread
  // (a wake-up, ~10-20 us) for callers whose thread may block for one model
  // call: the daemon's RPC threads, for short CPU models. Runs
  // options.thread_init on the calling thread first, so the call gets the
  // model's per-thread settings whatever the thread ran before.
  Ticket SubmitOrRunHere(Work work, Deadline deadline, Done done);

  // Removes a request that is still queued; its `done` gets CANCELLED.
  // Returns false when it already started or finished.
  bool Cancel(Ticket ticket);

  // Runs `work` on the calling thread on one of the runners in `allowed`
  // (bit i = runner i) - for weight staging, which borrows a model instance
  // of one particular replica. Never refused for a full queue (the queue
  // limit is for requests) and queued ahead of every request. Blocks;
  // UNAVAILABLE after Shutdown.
  Status RunPriority(uint64_t allowed, const Work& work);

  // Runs `fn` while no request is inside the container: stops dispatch,
  // waits for in-flight work, runs `fn`, resumes. Queued requests keep their
  // places and their deadlines keep running. Exclusive sections are
  // serialized with each other. When in-flight work has not finished by
  // `drain_deadline` (e.g. a hung inference), dispatch resumes, `fn` does
  // not run and the result is DEADLINE_EXCEEDED.
  Status RunExclusive(const std::function<Status()>& fn, Deadline drain_deadline = kNoDeadline);

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
    size_t runner = 0;                      // valid once granted
    bool poked = false;                     // sync: woken to try for a free runner
    bool priority = false;                  // RunPriority: no barging window, front of queue
    uint64_t allowed = ~uint64_t{0};        // runners it may take
    Status result;                          // set when it leaves the queue unserved
    std::condition_variable* cv = nullptr;  // sync waiters only
    Work work;                              // async waiters only
    Done done;                              // async waiters only
  };
  // Counters of one runner slot, written only by the request holding it.
  struct alignas(64) SlotStats {
    std::atomic<uint64_t> completed{0}, failed{0}, queue_ns{0}, compute_ns{0};
  };

  // What a section under mu_ leaves to do once mu_ is released: waking a
  // pool worker under the lock would only make it block on mu_ right away (a
  // second context switch per request), and `done` callbacks must not run
  // under it.
  struct AfterUnlock {
    uint64_t wake_workers = 0;      // bit i: notify worker i (popped off idle_workers_)
    std::vector<Waiter*> finished;  // left the queue unserved (async)
  };
  // An idle pool thread's parking spot (one per worker).
  struct WorkerSlot {
    std::condition_variable cv;
    bool woken = false;  // guarded by mu_: popped off idle_workers_ to run ready_
  };

  // Lock-free admission: takes a free runner if the gate is open.
  bool TryTakeFast(size_t* runner);
  // Takes a free runner slot among `allowed` (CAS on free_mask_); false if
  // none.
  bool TakeRunner(size_t* runner, uint64_t allowed = ~uint64_t{0});
  // Hands free runners to queued requests in FIFO order (or wakes a
  // synchronous head to compete for one); recomputes the gate.
  void DispatchLocked(AfterUnlock& after);
  void UpdateGateLocked();
  // Removes queued requests whose deadline passed.
  void ExpireLocked(Clock::time_point now, AfterUnlock& after);
  // Frees `runner`; records the request's counters when `timing` is given
  // (null: a runner taken and handed back without running anything).
  void ReleaseRunner(size_t runner, const RequestTiming* timing, bool ok);
  size_t InFlight() const;
  // Wakes the workers for granted async requests, then calls `done` of the
  // requests that left the queue unserved. REQUIRES: mu_ not held.
  void Complete(AfterUnlock& after);
  // Called with an entry just pushed onto ready_: pops the most recently
  // idle worker, if any, to be woken once mu_ is released.
  void WakeWorkerLocked(AfterUnlock& after);
  void WorkerLoop(size_t index);
  void ReaperLoop();

  const RunnerPoolOptions options_;
  const uint64_t all_free_;  // free_mask_ with every runner free

  // Admission state shared with the lock-free fast path. Invariant: a
  // request holds runner i iff bit i of free_mask_ is clear. gate_closed_ and
  // waiting_ (= queue_.size()) are written only under mu_. The gate is closed
  // while paused_ or stopping_, and while a request waits at the head of the
  // queue that arrivals must not pass: an async one, or a synchronous one
  // that has waited longer than the barging window (then runners are handed
  // to waiters in FIFO order). Within the window arrivals may take a free
  // runner first and the head is woken to compete; this avoids a convoy of
  // reserved-but-idle runners when callers outnumber them.
  // All accesses are seq_cst: a fast-path taker re-checks the gate after its
  // CAS, a releaser checks gate and waiting_ after setting its bit, and a new
  // waiter publishes waiting_ before it reads free_mask_, so neither a pause
  // nor a queued waiter can miss a runner that is taken or freed.
  std::atomic<uint64_t> free_mask_;
  std::atomic<bool> gate_closed_{false};
  std::atomic<size_t> waiting_{0};
  std::atomic<uint64_t> max_in_flight_{0};
  std::unique_ptr<SlotStats[]> slot_stats_;

  mutable std::mutex mu_;
  std::condition_variable idle_cv_;    // every runner became free
  std::condition_variable reaper_cv_;  // earlier deadline queued or stopping_
  std::mutex exclusive_mu_;            // serializes RunExclusive
  // Guarded by mu_:
  std::list<Waiter*> queue_;  // FIFO; owned by the waiting thread (sync) or heap (async)
  std::list<Waiter*> ready_;  // async requests holding a runner, not yet picked up
  // Idle workers, most recently idle at the back. Waking from the back keeps
  // one warm thread doing the work at low load (its caches are hot and its
  // CPU has not gone into a deep idle state); a shared condition variable
  // woke the longest-idle worker and every request started cold.
  std::vector<size_t> idle_workers_;
  bool paused_ = false;
  bool stopping_ = false;
  Ticket next_ticket_ = 1;
  Deadline reaper_wake_ = kNoDeadline;
  uint64_t rejected_ = 0, expired_ = 0, cancelled_ = 0;
  std::unique_ptr<WorkerSlot[]> worker_slots_;  // [num_runners]; `woken` guarded by mu_
  std::vector<std::thread> workers_;
  std::thread reaper_;
};

}  // namespace pt2serve
