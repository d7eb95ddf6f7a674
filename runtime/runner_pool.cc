#include "runtime/runner_pool.h"

#include <algorithm>
#include <bit>
#include <exception>
#include <optional>
#include <string>

#if defined(__linux__)
#include <pthread.h>
#endif

namespace pt2serve {
namespace {

Status RunGuarded(const std::function<Status()>& work) {
  try {
    return work();
  } catch (const std::exception& e) {
    return Internal(std::string("uncaught exception in request: ") + e.what());
  } catch (...) {
    return Internal("uncaught non-standard exception in request");
  }
}

// Names the calling thread (shown by top -H, perf, gdb); Linux only.
void NameThisThread(const std::string& name) {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
#else
  (void)name;
#endif
}

uint64_t Nanos(std::chrono::nanoseconds d) { return static_cast<uint64_t>(d.count()); }

RunnerPoolOptions Normalized(RunnerPoolOptions options) {
  options.num_runners = std::clamp<size_t>(options.num_runners, 1, kMaxRunners);
  return options;
}

uint64_t Mask(size_t runners) {
  return runners >= 64 ? ~uint64_t{0} : (uint64_t{1} << runners) - 1;
}

}  // namespace

RunnerPool::RunnerPool(RunnerPoolOptions options)
    : options_(Normalized(options)),
      all_free_(Mask(options_.num_runners)),
      free_mask_(all_free_),
      slot_stats_(new SlotStats[options_.num_runners]),
      worker_slots_(new WorkerSlot[options_.num_runners]) {
  idle_workers_.reserve(options_.num_runners);
  workers_.reserve(options_.num_runners);
  for (size_t i = 0; i < options_.num_runners; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
  reaper_ = std::thread([this] { ReaperLoop(); });
}

RunnerPool::~RunnerPool() {
  Shutdown();
  for (auto& t : workers_) t.join();
  reaper_.join();
}

size_t RunnerPool::InFlight() const {
  return options_.num_runners - static_cast<size_t>(std::popcount(free_mask_.load()));
}

bool RunnerPool::TakeRunner(size_t* runner, uint64_t allowed) {
  uint64_t mask = free_mask_.load();
  while ((mask & allowed) != 0) {
    const uint64_t usable = mask & allowed;
    const uint64_t bit = usable & (~usable + 1);  // lowest free runner it may take
    if (free_mask_.compare_exchange_weak(mask, mask & ~bit)) {
      *runner = static_cast<size_t>(std::countr_zero(bit));
      const uint64_t in_flight = options_.num_runners - std::popcount(mask & ~bit);
      uint64_t peak = max_in_flight_.load(std::memory_order_relaxed);
      while (in_flight > peak &&
             !max_in_flight_.compare_exchange_weak(peak, in_flight, std::memory_order_relaxed)) {
      }
      return true;
    }
  }
  return false;
}

bool RunnerPool::TryTakeFast(size_t* runner) {
  if (gate_closed_.load()) return false;
  if (!TakeRunner(runner)) return false;
  if (gate_closed_.load()) {
    // A pause or a waiter appeared meanwhile: hand the runner back through
    // the locked path so it goes to them in order.
    ReleaseRunner(*runner, /*timing=*/nullptr, /*ok=*/true);
    return false;
  }
  return true;
}

void RunnerPool::UpdateGateLocked() {
  waiting_.store(queue_.size());
  bool closed = paused_ || stopping_;
  if (!closed && !queue_.empty()) {
    const Waiter* head = queue_.front();
    // Arrivals may take a free runner past a synchronous head for a short
    // while; never past an async one (pool workers are awake) or a head that
    // has waited out its window.
    closed = head->cv == nullptr || head->priority ||
             Clock::now() - head->enqueued >= options_.barge_window;
  }
  gate_closed_.store(closed);
}

void RunnerPool::DispatchLocked(AfterUnlock& after) {
  const auto now = Clock::now();
  while (!paused_ && !queue_.empty()) {
    Waiter* w = queue_.front();
    if (w->deadline <= now) {
      queue_.pop_front();
      w->state = WaiterState::kFinished;
      w->result = DeadlineExceeded("deadline exceeded while queued for a runner");
      ++expired_;
      if (w->cv) w->cv->notify_one(); else after.finished.push_back(w);
      continue;
    }
    if (w->cv && !w->priority && now - w->enqueued < options_.barge_window) {
      // Within its barging window a synchronous head is woken to compete for
      // a free runner instead of having one reserved while it wakes up.
      if (free_mask_.load() != 0 && !w->poked) {
        w->poked = true;
        w->cv->notify_one();
      }
      break;
    }
    if (!TakeRunner(&w->runner, w->allowed)) break;
    queue_.pop_front();
    w->state = WaiterState::kGranted;
    if (w->cv) {
      // The waiter cannot return (and destroy its cv) before it re-takes mu_.
      w->cv->notify_one();
    } else {
      ready_.push_back(w);
      WakeWorkerLocked(after);
    }
  }
  UpdateGateLocked();
}

void RunnerPool::ExpireLocked(Clock::time_point now, AfterUnlock& after) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    Waiter* w = *it;
    if (w->deadline > now) {
      ++it;
      continue;
    }
    it = queue_.erase(it);
    w->state = WaiterState::kFinished;
    w->result = DeadlineExceeded("deadline exceeded while queued for a runner");
    ++expired_;
    if (w->cv) w->cv->notify_one(); else after.finished.push_back(w);
  }
  // The expired head may have been the waiter a free runner was poked for:
  // hand free runners to whoever is at the head now (no lost wake-up).
  DispatchLocked(after);
}

void RunnerPool::WakeWorkerLocked(AfterUnlock& after) {
  if (idle_workers_.empty()) return;  // every worker is busy and re-checks ready_
  const size_t i = idle_workers_.back();
  idle_workers_.pop_back();
  worker_slots_[i].woken = true;
  after.wake_workers |= uint64_t{1} << i;
}

void RunnerPool::Complete(AfterUnlock& after) {
  for (uint64_t m = after.wake_workers; m != 0; m &= m - 1) {
    worker_slots_[std::countr_zero(m)].cv.notify_one();
  }
  for (Waiter* w : after.finished) {
    RequestTiming timing;
    timing.queue = Clock::now() - w->enqueued;
    if (w->done) w->done(w->result, timing);
    delete w;
  }
}

void RunnerPool::ReleaseRunner(size_t runner, const RequestTiming* timing, bool ok) {
  if (timing) {
    // Only the holder of `runner` writes its counters: plain load + store.
    SlotStats& st = slot_stats_[runner];
    auto add = [](std::atomic<uint64_t>& counter, uint64_t v) {
      counter.store(counter.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
    };
    add(st.queue_ns, Nanos(timing->queue));
    add(st.compute_ns, Nanos(timing->compute));
    add(ok ? st.completed : st.failed, 1);
  }
  free_mask_.fetch_or(uint64_t{1} << runner);
  if (!gate_closed_.load() && waiting_.load() == 0) return;  // nobody waits for it
  AfterUnlock after;
  {
    std::lock_guard lock(mu_);
    DispatchLocked(after);
    if ((paused_ || stopping_) && free_mask_.load() == all_free_) idle_cv_.notify_all();
  }
  Complete(after);
}

Status RunnerPool::Run(const Work& work, Deadline deadline, RequestTiming* timing) {
  const auto start = Clock::now();
  size_t runner = 0;
  if (!TryTakeFast(&runner)) {
    std::optional<std::condition_variable> cv;  // only built when the caller must wait
    Waiter w;
    std::unique_lock lock(mu_);
    if (stopping_) {
      ++rejected_;
      return Unavailable("runner pool is shutting down");
    }
    if (!paused_ && queue_.empty() && TakeRunner(&runner)) {
      // A runner came free between the fast path and the lock.
    } else {
      if (deadline <= start) {
        ++expired_;
        return DeadlineExceeded("deadline exceeded before a runner was free");
      }
      if (queue_.size() >= options_.max_queue_size) {
        ++rejected_;
        return ResourceExhausted("request queue is full (" +
                                 std::to_string(options_.max_queue_size) + " waiting)");
      }
      w.ticket = next_ticket_++;
      w.deadline = deadline;
      w.enqueued = start;
      w.cv = &cv.emplace();
      queue_.push_back(&w);
      waiting_.store(queue_.size());  // before DispatchLocked reads free_mask_
      if (deadline < reaper_wake_) {
        reaper_wake_ = deadline;
        reaper_cv_.notify_one();
      }
      // A runner may have been freed meanwhile: DispatchLocked wakes (pokes)
      // or grants this waiter at once.
      AfterUnlock after;
      DispatchLocked(after);
      for (;;) {
        cv->wait(lock, [&] { return w.state != WaiterState::kQueued || w.poked; });
        if (w.state != WaiterState::kQueued) break;
        if (options_.on_poked_for_test) {
          lock.unlock();
          options_.on_poked_for_test();
          lock.lock();
          if (w.state != WaiterState::kQueued) break;
        }
        w.poked = false;
        if (!paused_ && queue_.front() == &w && TakeRunner(&w.runner)) {
          queue_.pop_front();
          w.state = WaiterState::kGranted;
          DispatchLocked(after);  // wake the next head if runners are left
          break;
        }
      }
      lock.unlock();
      Complete(after);
      if (w.state == WaiterState::kFinished) return w.result;
      runner = w.runner;
    }
  }
  const auto admitted = Clock::now();
  Status result = RunGuarded([&] { return work(runner); });
  const RequestTiming measured{admitted - start, Clock::now() - admitted};
  ReleaseRunner(runner, &measured, result.ok());
  if (timing) *timing = measured;
  return result;
}

RunnerPool::Ticket RunnerPool::Submit(Work work, Deadline deadline, Done done) {
  auto* w = new Waiter;
  w->deadline = deadline;
  w->enqueued = Clock::now();
  w->work = std::move(work);
  w->done = std::move(done);
  AfterUnlock after;
  Ticket ticket = 0;
  {
    std::lock_guard lock(mu_);
    w->ticket = ticket = next_ticket_++;
    if (stopping_) {
      ++rejected_;
      w->result = Unavailable("runner pool is shutting down");
      after.finished.push_back(w);
    } else if (!paused_ && queue_.empty() && TakeRunner(&w->runner)) {
      w->state = WaiterState::kGranted;
      ready_.push_back(w);  // a worker may run and delete it once mu_ is released
      WakeWorkerLocked(after);
    } else if (deadline <= w->enqueued) {
      ++expired_;
      w->result = DeadlineExceeded("deadline exceeded before a runner was free");
      after.finished.push_back(w);
    } else if (queue_.size() >= options_.max_queue_size) {
      ++rejected_;
      w->result = ResourceExhausted("request queue is full (" +
                                    std::to_string(options_.max_queue_size) + " waiting)");
      after.finished.push_back(w);
    } else {
      queue_.push_back(w);
      waiting_.store(queue_.size());
      gate_closed_.store(true);  // an async head closes the gate (UpdateGateLocked)
      if (deadline < reaper_wake_) {
        reaper_wake_ = deadline;
        reaper_cv_.notify_one();
      }
      DispatchLocked(after);  // a runner may have been freed before the gate closed
    }
  }
  Complete(after);
  return ticket;
}

RunnerPool::Ticket RunnerPool::SubmitOrRunHere(Work work, Deadline deadline, Done done) {
  const auto submitted = Clock::now();
  size_t runner = 0;
  if (!TryTakeFast(&runner)) return Submit(std::move(work), deadline, std::move(done));
  if (options_.thread_init) options_.thread_init();
  const auto admitted = Clock::now();  // queue time: taking the runner, thread settings
  Status result = RunGuarded([&] { return work(runner); });
  const RequestTiming timing{admitted - submitted, Clock::now() - admitted};
  ReleaseRunner(runner, &timing, result.ok());
  done(result, timing);
  return 0;
}

bool RunnerPool::Cancel(Ticket ticket) {
  Waiter* found = nullptr;
  AfterUnlock after;
  {
    std::lock_guard lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if ((*it)->ticket == ticket && !(*it)->cv) {
        found = *it;
        queue_.erase(it);
        break;
      }
    }
    if (!found) return false;
    found->state = WaiterState::kFinished;
    found->result = Cancelled("request cancelled while queued");
    ++cancelled_;
    DispatchLocked(after);  // as in ExpireLocked: the next head may take a free runner
  }
  after.finished.push_back(found);
  Complete(after);
  return true;
}

Status RunnerPool::RunPriority(uint64_t allowed, const Work& work) {
  allowed &= all_free_;
  if (allowed == 0) return InvalidArgument("RunPriority: no runner of this pool is allowed");
  std::condition_variable cv;
  Waiter w;
  w.priority = true;
  w.allowed = allowed;
  w.cv = &cv;
  size_t runner = 0;
  {
    std::unique_lock lock(mu_);
    if (stopping_) return Unavailable("runner pool is shutting down");
    if (!paused_ && TakeRunner(&runner, allowed)) {
      // Free at once. Queued requests could not have used it: a free runner
      // is never left beside a waiter outside its barging window.
    } else {
      w.ticket = next_ticket_++;
      w.enqueued = Clock::now();
      queue_.push_front(&w);  // ahead of requests; never counted against the limit
      AfterUnlock after;
      DispatchLocked(after);
      cv.wait(lock, [&] { return w.state != WaiterState::kQueued; });
      lock.unlock();
      Complete(after);
      if (w.state == WaiterState::kFinished) return w.result;
      runner = w.runner;
    }
  }
  Status result = RunGuarded([&] { return work(runner); });
  ReleaseRunner(runner, /*timing=*/nullptr, result.ok());
  return result;
}

Status RunnerPool::RunExclusive(const std::function<Status()>& fn, Deadline drain_deadline) {
  std::lock_guard exclusive(exclusive_mu_);
  {
    std::unique_lock lock(mu_);
    if (stopping_) return Unavailable("runner pool is shutting down");
    paused_ = true;
    gate_closed_.store(true);
    const auto drained = [&] { return free_mask_.load() == all_free_; };
    if (drain_deadline == kNoDeadline) {
      idle_cv_.wait(lock, drained);
    } else if (!idle_cv_.wait_until(lock, drain_deadline, drained)) {
      const size_t busy = InFlight();
      paused_ = false;
      AfterUnlock after;
      DispatchLocked(after);
      lock.unlock();
      Complete(after);
      return DeadlineExceeded(std::to_string(busy) + " request(s) still running at the drain "
                              "deadline; nothing was changed");
    }
  }
  Status result = RunGuarded(fn);
  AfterUnlock after;
  {
    std::lock_guard lock(mu_);
    paused_ = false;
    DispatchLocked(after);
  }
  Complete(after);
  return result;
}

void RunnerPool::Shutdown() {
  AfterUnlock after;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    gate_closed_.store(true);
    for (Waiter* w : queue_) {
      w->state = WaiterState::kFinished;
      w->result = Unavailable("runner pool is shutting down");
      ++rejected_;
      if (w->cv) w->cv->notify_one(); else after.finished.push_back(w);
    }
    queue_.clear();
    waiting_.store(0);
    reaper_cv_.notify_all();
  }
  Complete(after);
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return free_mask_.load() == all_free_; });
  for (size_t i = 0; i < options_.num_runners; ++i) worker_slots_[i].cv.notify_all();
}

RunnerPoolStats RunnerPool::stats() const {
  RunnerPoolStats s;
  for (size_t i = 0; i < options_.num_runners; ++i) {
    const SlotStats& st = slot_stats_[i];
    s.completed_per_runner.push_back(st.completed.load(std::memory_order_relaxed));
    s.completed += s.completed_per_runner.back();
    s.failed += st.failed.load(std::memory_order_relaxed);
    s.queue_ns += st.queue_ns.load(std::memory_order_relaxed);
    s.compute_ns += st.compute_ns.load(std::memory_order_relaxed);
  }
  s.max_in_flight = max_in_flight_.load(std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  s.queued = queue_.size();
  s.in_flight = InFlight();
  s.rejected = rejected_;
  s.expired = expired_;
  s.cancelled = cancelled_;
  return s;
}

void RunnerPool::WorkerLoop(size_t index) {
  NameThisThread("pool-worker-" + std::to_string(index));
  if (options_.thread_init) options_.thread_init();
  WorkerSlot& slot = worker_slots_[index];
  for (;;) {
    Waiter* w = nullptr;
    {
      std::unique_lock lock(mu_);
      while (ready_.empty() && !stopping_) {
        idle_workers_.push_back(index);
        slot.cv.wait(lock, [&] { return slot.woken || stopping_; });
        if (!slot.woken) std::erase(idle_workers_, index);  // woken by Shutdown
        slot.woken = false;
      }
      if (ready_.empty()) return;  // stopping_, nothing left to run
      w = ready_.front();
      ready_.pop_front();
    }
    const auto admitted = Clock::now();
    Status result = RunGuarded([w] { return w->work(w->runner); });
    const RequestTiming timing{admitted - w->enqueued, Clock::now() - admitted};
    ReleaseRunner(w->runner, &timing, result.ok());
    w->done(result, timing);
    delete w;
  }
}

void RunnerPool::ReaperLoop() {
  NameThisThread("pool-reaper");
  std::unique_lock lock(mu_);
  while (!stopping_) {
    AfterUnlock after;
    ExpireLocked(Clock::now(), after);
    if (!after.finished.empty() || after.wake_workers != 0) {
      lock.unlock();
      Complete(after);
      lock.lock();
      continue;
    }
    reaper_wake_ = kNoDeadline;
    for (const Waiter* w : queue_) reaper_wake_ = std::min(reaper_wake_, w->deadline);
    if (reaper_wake_ == kNoDeadline) {
      reaper_cv_.wait(lock);
    } else {
      reaper_cv_.wait_until(lock, reaper_wake_);
    }
  }
}

}  // namespace pt2serve
