#include "runtime/dynamic_batcher.h"

#include <algorithm>
#include <string>

namespace pt2serve {
namespace {

Status Expired() { return DeadlineExceeded("deadline exceeded while waiting for a batch"); }

}  // namespace

DynamicBatcher::DynamicBatcher(BatcherOptions options, RunnerPool& pool, Executor executor)
    : options_(std::move(options)), pool_(pool), executor_(std::move(executor)) {
  levels_.resize(options_.priority_levels);
  timer_ = std::thread([this] { TimerLoop(); });
}

DynamicBatcher::~DynamicBatcher() {
  Shutdown();
  {
    // Pool callbacks still to come would run BatchFinished() on a freed
    // batcher (found by TSan: heap-use-after-free after pool.Shutdown()).
    std::unique_lock lock(mu_);
    drained_cv_.wait(lock, [&] { return unfinished_ == 0; });
  }
  if (timer_.joinable()) timer_.join();
}

uint64_t DynamicBatcher::Submit(EntryPtr entry, bool run_here) {
  std::vector<Batch> ready;
  std::vector<EntryPtr> failed;
  uint64_t ticket = 0;
  Status refused;
  {
    std::lock_guard lock(mu_);
    const uint32_t level =
        entry->priority == 0 ? options_.default_priority_level : entry->priority;
    auto& queue = levels_[level - 1];
    const size_t limit = options_.max_queue_size[level - 1];
    if (stopping_) {
      refused = Unavailable("model is shutting down");
    } else if (queue.size() >= limit) {
      refused = ResourceExhausted(
          "request queue is full (" + std::to_string(limit) + " waiting" +
          (options_.priority_levels > 1 ? " at priority level " + std::to_string(level) : "") +
          ")");
    } else {
      const auto now = Clock::now();
      if (entry->deadline <= now) {
        refused = DeadlineExceeded("deadline exceeded before the request was queued");
      } else {
        entry->ticket = ticket = next_ticket_++;
        entry->seq = next_seq_++;
        entry->level = level;
        entry->enqueued = now;
        entry->queued = true;
        queue.push_back(entry);
        live_.emplace(ticket, entry);
        ++queued_;
        next_deadline_ = std::min(next_deadline_, entry->deadline);
        ready = FormLocked(now, failed);
        NotifyTimerLocked();
      }
    }
    if (!refused.ok()) ++stats_.rejected;
  }
  if (!refused.ok()) {
    entry->fail(refused);
    return 0;
  }
  FailAll(failed, Expired());
  Dispatch(std::move(ready), run_here);
  return ticket;
}

bool DynamicBatcher::Cancel(uint64_t ticket) {
  EntryPtr entry;
  {
    std::lock_guard lock(mu_);
    auto it = live_.find(ticket);
    if (it == live_.end()) return false;
    entry = it->second;
    live_.erase(it);
    ++stats_.cancelled;
    if (!entry->queued) {
      entry->cancelled = true;  // dispatched: RunBatch drops it
      return true;
    }
    auto& queue = levels_[entry->level - 1];
    queue.erase(std::find(queue.begin(), queue.end(), entry));
    entry->queued = false;
    --queued_;
  }
  FailAll({entry}, Cancelled("request cancelled while waiting for a batch"));
  return true;
}

void DynamicBatcher::ExpireLocked(Clock::time_point now, std::vector<EntryPtr>& failed) {
  if (now < next_deadline_) return;
  next_deadline_ = kNoDeadline;
  for (auto& queue : levels_) {
    for (auto it = queue.begin(); it != queue.end();) {
      EntryPtr& e = *it;
      if (e->deadline <= now) {
        e->queued = false;
        live_.erase(e->ticket);
        failed.push_back(e);
        it = queue.erase(it);
        --queued_;
        ++stats_.expired;
      } else {
        next_deadline_ = std::min(next_deadline_, e->deadline);
        ++it;
      }
    }
  }
}

std::vector<DynamicBatcher::Batch> DynamicBatcher::FormLocked(Clock::time_point now,
                                                              std::vector<EntryPtr>& failed) {
  ExpireLocked(now, failed);
  std::vector<Batch> out;
  wake_ = Clock::time_point::max();
  while (!stopping_ && queued_ > 0 && in_flight_ < options_.max_batches_in_flight) {
    // Walk the queues in priority order; the batch is a prefix of each level.
    Batch batch;
    std::vector<size_t> taken(levels_.size(), 0);
    std::vector<size_t> rows_after;  // cumulative rows after each entry
    int64_t rows = 0;
    bool closed = false;  // a request that cannot join, or the batch is full
    Clock::time_point oldest = Clock::time_point::max();
    for (size_t l = 0; l < levels_.size() && !closed; ++l) {
      for (const EntryPtr& e : levels_[l]) {
        if (!batch.empty() &&
            (e->key != batch.front()->key || rows + e->rows > options_.max_batch_size)) {
          closed = true;
          break;
        }
        batch.push_back(e);
        ++taken[l];
        rows += e->rows;
        rows_after.push_back(rows);
        oldest = std::min(oldest, e->enqueued);
        if (rows == options_.max_batch_size) {
          closed = true;
          break;
        }
      }
    }
    bool ready = closed || options_.max_queue_delay.count() == 0 ||
                 now >= oldest + options_.max_queue_delay;
    if (!ready && !options_.preferred_batch_sizes.empty()) {
      // The largest prefix whose row count is a preferred size.
      for (size_t k = batch.size(); k > 0 && !ready; --k) {
        if (std::binary_search(options_.preferred_batch_sizes.begin(),
                               options_.preferred_batch_sizes.end(), rows_after[k - 1])) {
          ready = true;
          batch.resize(k);
        }
      }
      if (ready) {  // recount what is taken from each level
        size_t left = batch.size();
        for (size_t& t : taken) {
          t = std::min(t, left);
          left -= t;
        }
      }
    }
    if (!ready) {
      wake_ = oldest + options_.max_queue_delay;
      break;
    }
    for (size_t l = 0; l < levels_.size(); ++l) {
      for (size_t i = 0; i < taken[l]; ++i) {
        levels_[l].front()->queued = false;
        levels_[l].pop_front();
      }
    }
    queued_ -= batch.size();
    ++in_flight_;
    ++unfinished_;  // until Dispatch's pool callback for it has returned
    ++stats_.batches;
    out.push_back(std::move(batch));
  }
  return out;
}

void DynamicBatcher::Dispatch(std::vector<Batch> batches, bool run_here) {
  for (Batch& b : batches) {
    auto batch = std::make_shared<Batch>(std::move(b));
    auto submit = run_here ? &RunnerPool::SubmitOrRunHere : &RunnerPool::Submit;
    run_here = false;  // one batch at most on the caller's thread
    (pool_.*submit)(
        [this, batch](size_t runner) {
          RunBatch(*batch, runner);
          return Status::Ok();
        },
        kNoDeadline,
        [this, batch](const Status& status, const RequestTiming&) {
          if (!status.ok()) {  // the pool refused the batch: nothing of it ran
            std::vector<EntryPtr> dropped;
            {
              std::lock_guard lock(mu_);
              for (const EntryPtr& e : *batch) {
                if (live_.erase(e->ticket) > 0 || e->cancelled) dropped.push_back(e);
              }
            }
            FailAll(dropped, status);
          }
          BatchFinished();
          std::lock_guard lock(mu_);
          if (--unfinished_ == 0) drained_cv_.notify_all();
        });
  }
}

void DynamicBatcher::RunBatch(const Batch& batch, size_t runner) {
  Batch live;
  std::vector<EntryPtr> expired, cancelled;
  {
    const auto now = Clock::now();
    std::lock_guard lock(mu_);
    for (const EntryPtr& e : batch) {
      if (e->cancelled) {
        cancelled.push_back(e);
      } else if (e->deadline <= now) {
        live_.erase(e->ticket);
        ++stats_.expired;
        expired.push_back(e);
      } else {
        live_.erase(e->ticket);
        e->started = true;
        live.push_back(e);
      }
    }
  }
  FailAll(cancelled, Cancelled("request cancelled while waiting for a batch"));
  FailAll(expired, Expired());
  if (live.empty()) return;
  try {
    executor_(live, runner);
  } catch (const std::exception& e) {
    FailAll(live, Internal(std::string("batch execution failed: ") + e.what()));
  }
}

void DynamicBatcher::BatchFinished() {
  std::vector<Batch> ready;
  std::vector<EntryPtr> failed;
  {
    std::lock_guard lock(mu_);
    --in_flight_;
    ready = FormLocked(Clock::now(), failed);
    NotifyTimerLocked();
  }
  FailAll(failed, Expired());
  Dispatch(std::move(ready));
}

void DynamicBatcher::FailAll(const std::vector<EntryPtr>& entries, const Status& status) {
  for (const EntryPtr& e : entries) Deliver(*e, [e, status] { e->fail(status); });
}

void DynamicBatcher::NotifyTimerLocked() {
  if (std::min(wake_, next_deadline_) < timer_until_) timer_cv_.notify_one();
}

void DynamicBatcher::Deliver(Entry& entry, const std::function<void()>& reply) {
  if (entry.delivered.exchange(true)) return;
  if (!options_.preserve_ordering) {
    reply();
    return;
  }
  // Replies run under deliver_mu_ so that they start in arrival order.
  std::lock_guard lock(deliver_mu_);
  if (entry.seq != next_delivery_) {
    held_.emplace(entry.seq, reply);
    return;
  }
  reply();
  ++next_delivery_;
  for (auto it = held_.begin(); it != held_.end() && it->first == next_delivery_;
       it = held_.erase(it)) {
    it->second();
    ++next_delivery_;
  }
}

void DynamicBatcher::Shutdown() {
  std::vector<EntryPtr> failed;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& queue : levels_) {
      for (EntryPtr& e : queue) {
        e->queued = false;
        live_.erase(e->ticket);
        failed.push_back(e);
      }
      queue.clear();
    }
    queued_ = 0;
    timer_cv_.notify_all();
  }
  // Arrival order, so held replies (preserve_ordering) can drain.
  std::sort(failed.begin(), failed.end(),
            [](const EntryPtr& a, const EntryPtr& b) { return a->seq < b->seq; });
  FailAll(failed, Unavailable("model is shutting down"));
  // A timer pass that formed batches before stopping_ was set may still be
  // handing them to the pool: wait for it (never called on the timer thread).
  if (timer_.joinable() && timer_.get_id() != std::this_thread::get_id()) timer_.join();
}

BatcherStats DynamicBatcher::stats() const {
  std::lock_guard lock(mu_);
  BatcherStats s = stats_;
  s.queued = queued_;
  return s;
}

void DynamicBatcher::TimerLoop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    timer_until_ = std::min(wake_, next_deadline_);
    if (timer_until_ == Clock::time_point::max()) {
      timer_cv_.wait(lock);
    } else {
      timer_cv_.wait_until(lock, timer_until_);
    }
    timer_until_ = Clock::time_point::min();  // awake: no notification needed
    if (stopping_) break;
    std::vector<EntryPtr> failed;
    std::vector<Batch> ready = FormLocked(Clock::now(), failed);
    lock.unlock();
    FailAll(failed, Expired());
    Dispatch(std::move(ready));
    lock.lock();
  }
}

}  // namespace pt2serve
