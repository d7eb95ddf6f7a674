// DynamicBatcher: the scheduling layer of a model with dynamic batching.
//
// Requests wait here, in one FIFO queue per priority level, until they form a
// batch; a batch is then handed to the model's RunnerPool as ONE unit of work,
// so everything the pool guarantees (never more calls inside the container
// than runners, the swap gate, shutdown) holds per batch. The split of duties
// (see shared/notes/batching-design.md (f), docs/batching.md):
//
//   DynamicBatcher: queue, priorities, batch formation, deadlines and
//                   cancellation of queued requests, response ordering.
//   RunnerPool:     runner slots, admission, pause/swap, pool threads.
//   Executor:       (the Model) concatenates, runs, splits, replies.
//
// Formation (Triton's dynamic batcher rules): requests are taken in priority
// order (level 1 first), FIFO inside a level, while they agree on every
// non-batch dim (ShapeKey) and fit in max_batch_size rows; the first request
// that does not fit closes the batch. A batch is dispatched when it is full,
// closed by a misfit, reached a preferred size, or its oldest request has
// waited max_queue_delay (at once when the delay is 0) - and only while fewer
// than `max_batches_in_flight` (= runners) batches are out. While every runner
// is busy the pending batch keeps growing, which is what makes batching pay
// under load. Requests leave the queue only when their batch is dispatched;
// one cancelled or past its deadline before its batch runs is answered
// CANCELLED / DEADLINE_EXCEEDED and dropped from the batch.
//
// No thread hop on the fast path: the submitting thread dispatches a batch
// that is ready at once (and, when its caller allows it and a runner is free,
// runs it right there: RunnerPool::SubmitOrRunHere); the batcher's own thread
// only wakes for a max_queue_delay or the nearest deadline, and a finishing
// batch dispatches the next one from the pool thread.
//
// Thread-safety: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "runtime/runner_pool.h"

namespace pt2serve {

struct BatcherOptions {
  int64_t max_batch_size = 1;                   // rows per batch, >= 1
  std::chrono::microseconds max_queue_delay{0};
  std::vector<int64_t> preferred_batch_sizes;   // ascending, each in 1..max_batch_size
  bool preserve_ordering = false;               // reply in arrival order
  // Levels 1..priority_levels, 1 served first; requests naming none get
  // default_priority_level.
  uint32_t priority_levels = 1;
  uint32_t default_priority_level = 1;
  // Requests allowed to wait, per level (index level-1); more are refused
  // with RESOURCE_EXHAUSTED. Must have priority_levels entries.
  std::vector<size_t> max_queue_size = {64};
  size_t max_batches_in_flight = 1;             // the pool's runner count
};

struct BatcherStats {
  uint64_t queued = 0;      // waiting now, all levels
  uint64_t batches = 0;     // dispatched batches
  uint64_t rejected = 0;    // queue full or shut down
  uint64_t expired = 0;     // deadline passed before their batch ran
  uint64_t cancelled = 0;   // cancelled before their batch ran
};

class DynamicBatcher {
 public:
  // One queued request. The caller fills the fields above the line before
  // Submit; the batcher owns the rest.
  struct Entry {
    int64_t rows = 1;                 // dim-0 size
    std::vector<int64_t> key;         // ShapeKey of its inputs
    uint32_t priority = 0;            // 0 = the default level
    Deadline deadline = kNoDeadline;
    std::shared_ptr<void> payload;    // the caller's request state
    // Answers a request that leaves without running (queue full, cancelled,
    // expired, shutdown). Runs without the batcher's lock held.
    std::function<void(const Status&)> fail;
    // ---- owned by the batcher (guarded by its mutex) ----
    uint64_t ticket = 0;
    uint64_t seq = 0;                 // arrival order, for preserve_ordering
    uint32_t level = 1;
    Clock::time_point enqueued;
    bool queued = false;              // in a level queue
    bool started = false;             // its batch began running
    bool cancelled = false;           // cancelled after dispatch, before start
    std::atomic<bool> delivered{false};  // answered
  };
  using EntryPtr = std::shared_ptr<Entry>;
  using Batch = std::vector<EntryPtr>;
  // Runs a batch on a pool thread with runner slot `runner` held. Must call
  // Deliver() exactly once for every entry of `batch` (already stripped of
  // cancelled and expired entries; never empty).
  using Executor = std::function<void(const Batch& batch, size_t runner)>;

  // `pool` must outlive the batcher's in-flight batches: call Shutdown(),
  // then shut the pool down, then destroy the batcher. The destructor waits
  // until the pool has called back for every batch handed to it (the pool's
  // Shutdown returns once runners are free, which can be before that).
  DynamicBatcher(BatcherOptions options, RunnerPool& pool, Executor executor);
  ~DynamicBatcher();
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues `entry` and returns its ticket (0 when it was refused: then
  // entry->fail has already run). REQUIRES: 1 <= rows <= max_batch_size and
  // priority <= priority_levels (the caller validates and names the model).
  // `run_here`: the caller's thread may block for one batch, so a batch this
  // submission makes ready runs on it when a runner is free at once (at
  // concurrency 1 with max_queue_delay 0 that is every request: the hand-off
  // to a pool thread would be pure latency). Formation is the same either way.
  uint64_t Submit(EntryPtr entry, bool run_here = false);
  // Cancels a request whose batch has not started; false otherwise.
  bool Cancel(uint64_t ticket);
  // Answers one entry of a running batch: runs `reply` now or, with
  // preserve_ordering, once every earlier request has been answered.
  void Deliver(Entry& entry, const std::function<void()>& reply);
  // Refuses new requests and fails the queued ones with UNAVAILABLE. Batches
  // already handed to the pool still run. The first call also stops the
  // timer thread, so nothing hands the pool new batches once it returns.
  // Idempotent.
  void Shutdown();

  const BatcherOptions& options() const { return options_; }
  BatcherStats stats() const;

 private:
  // Forms every batch that is ready and may go out now; returns them to be
  // handed to the pool once mu_ is released. Sets wake_ for the timer.
  std::vector<Batch> FormLocked(Clock::time_point now, std::vector<EntryPtr>& failed);
  // Removes queued entries whose deadline passed (into `failed`).
  void ExpireLocked(Clock::time_point now, std::vector<EntryPtr>& failed);
  // Hands `batches` to the pool; the first may run on the calling thread
  // (`run_here`, see Submit).
  void Dispatch(std::vector<Batch> batches, bool run_here = false);
  void RunBatch(const Batch& batch, size_t runner);
  void BatchFinished();
  // Answers entries that leave without running. REQUIRES: mu_ not held.
  void FailAll(const std::vector<EntryPtr>& entries, const Status& status);
  // Wakes the timer when it sleeps past the new wake_ / next_deadline_.
  void NotifyTimerLocked();
  void TimerLoop();

  const BatcherOptions options_;
  RunnerPool& pool_;
  const Executor executor_;

  mutable std::mutex mu_;
  std::condition_variable timer_cv_;
  // Guarded by mu_:
  std::vector<std::deque<EntryPtr>> levels_;          // [level-1], FIFO
  std::unordered_map<uint64_t, EntryPtr> live_;       // queued or dispatched, not started
  size_t queued_ = 0;
  size_t in_flight_ = 0;                              // batches handed to the pool
  size_t unfinished_ = 0;  // handed to the pool, its callback not yet returned
  std::condition_variable drained_cv_;                // unfinished_ reached 0
  uint64_t next_ticket_ = 1;
  uint64_t next_seq_ = 0;
  Deadline next_deadline_ = kNoDeadline;              // earliest queued deadline (may be stale-early)
  Clock::time_point wake_ = Clock::time_point::max(); // when the timer must look again
  Clock::time_point timer_until_ = Clock::time_point::min();  // what the timer sleeps toward
  bool stopping_ = false;
  BatcherStats stats_;

  // preserve_ordering: replies held until every earlier one was sent.
  std::mutex deliver_mu_;
  uint64_t next_delivery_ = 0;                        // guarded by deliver_mu_
  std::map<uint64_t, std::function<void()>> held_;    // guarded by deliver_mu_

  std::thread timer_;
};

}  // namespace pt2serve
