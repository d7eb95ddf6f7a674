#include "runtime/runner_pool.h"

#include <algorithm>
#include <exception>
#include <optional>

namespace pt2serve {
namespace {

Status RunGuarded(const RunnerPool::Work& work) {
  try {
    return work();
  } catch (const std::exception& e) {
    return Internal(std::string("uncaught exception in request: ") + e.what());
  } catch (...) {
    return Internal("uncaught non-standard exception in request");
  }
}

uint64_t Nanos(std::chrono::nanoseconds d) { return static_cast<uint64_t>(d.count()); }

}  // namespace

namespace {
RunnerPoolOptions Normalized(RunnerPoolOptions options) {
  options.num_runners = std::max<size_t>(options.num_runners, 1);
  return options;
}
}  // namespace

RunnerPool::RunnerPool(RunnerPoolOptions options) : options_(Normalized(options)) {
  workers_.reserve(options_.num_runners);
  for (size_t i = 0; i < options_.num_runners; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
  reaper_ = std::thread([this] { ReaperLoop(); });
}

RunnerPool::~RunnerPool() {
  Shutdown();
  for (auto& t : workers_) t.join();
  reaper_.join();
}

bool RunnerPool::TryAdmitLocked() {
  if (paused_ || !queue_.empty() || in_flight_ >= options_.num_runners) return false;
  ++in_flight_;
  stats_.max_in_flight = std::max<uint64_t>(stats_.max_in_flight, in_flight_);
  return true;
}

void RunnerPool::DispatchLocked(std::vector<Waiter*>& finished) {
  const auto now = Clock::now();
  while (!paused_ && !queue_.empty() && in_flight_ < options_.num_runners) {
    Waiter* w = queue_.front();
    queue_.pop_front();
    if (w->deadline <= now) {
      w->state = WaiterState::kFinished;
      w->result = DeadlineExceeded("deadline exceeded while queued for a runner");
      ++stats_.expired;
      if (w->cv) w->cv->notify_one(); else finished.push_back(w);
      continue;
    }
    ++in_flight_;
    stats_.max_in_flight = std::max<uint64_t>(stats_.max_in_flight, in_flight_);
    w->state = WaiterState::kGranted;
    if (w->cv) {
      // The waiter cannot return (and destroy its cv) before it re-takes mu_.
      w->cv->notify_one();
    } else {
      ready_.push_back(w);
      worker_cv_.notify_one();
    }
  }
}

void RunnerPool::ExpireLocked(Clock::time_point now, std::vector<Waiter*>& finished) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    Waiter* w = *it;
    if (w->deadline > now) {
      ++it;
      continue;
    }
    it = queue_.erase(it);
    w->state = WaiterState::kFinished;
    w->result = DeadlineExceeded("deadline exceeded while queued for a runner");
    ++stats_.expired;
    if (w->cv) w->cv->notify_one(); else finished.push_back(w);
  }
}

void RunnerPool::Finish(const std::vector<Waiter*>& finished) {
  for (Waiter* w : finished) {
    RequestTiming timing;
    timing.queue = Clock::now() - w->enqueued;
    if (w->done) w->done(w->result, timing);
    delete w;
  }
}

void RunnerPool::ReleaseRunner(const RequestTiming& timing, bool ok) {
  std::vector<Waiter*> finished;
  {
    std::lock_guard lock(mu_);
    --in_flight_;
    stats_.queue_ns += Nanos(timing.queue);
    stats_.compute_ns += Nanos(timing.compute);
    ++(ok ? stats_.completed : stats_.failed);
    DispatchLocked(finished);
    if (in_flight_ == 0 && (paused_ || stopping_)) idle_cv_.notify_all();
  }
  Finish(finished);
}

Status RunnerPool::Run(const Work& work, Deadline deadline, RequestTiming* timing) {
  const auto start = Clock::now();
  std::optional<std::condition_variable> cv;  // only built when the caller must wait
  Waiter w;
  {
    std::unique_lock lock(mu_);
    if (stopping_) {
      ++stats_.rejected;
      return Unavailable("runner pool is shutting down");
    }
    if (!TryAdmitLocked()) {
      if (deadline <= start) {
        ++stats_.expired;
        return DeadlineExceeded("deadline exceeded before a runner was free");
      }
      if (queue_.size() >= options_.max_queue_size) {
        ++stats_.rejected;
        return ResourceExhausted("request queue is full (" +
                                 std::to_string(options_.max_queue_size) + " waiting)");
      }
      w.ticket = next_ticket_++;
      w.deadline = deadline;
      w.enqueued = start;
      w.cv = &cv.emplace();
      queue_.push_back(&w);
      if (deadline < reaper_wake_) {
        reaper_wake_ = deadline;
        reaper_cv_.notify_one();
      }
      cv->wait(lock, [&] { return w.state != WaiterState::kQueued; });
      if (w.state == WaiterState::kFinished) return w.result;
    }
  }
  const auto admitted = Clock::now();
  Status result = RunGuarded(work);
  const RequestTiming measured{admitted - start, Clock::now() - admitted};
  ReleaseRunner(measured, result.ok());
  if (timing) *timing = measured;
  return result;
}

RunnerPool::Ticket RunnerPool::Submit(Work work, Deadline deadline, Done done) {
  auto* w = new Waiter;
  w->deadline = deadline;
  w->enqueued = Clock::now();
  w->work = std::move(work);
  w->done = std::move(done);
  {
    std::lock_guard lock(mu_);
    w->ticket = next_ticket_++;
    if (stopping_) {
      ++stats_.rejected;
      w->result = Unavailable("runner pool is shutting down");
    } else if (TryAdmitLocked()) {
      w->state = WaiterState::kGranted;
      ready_.push_back(w);
      worker_cv_.notify_one();
      return w->ticket;
    } else if (deadline <= w->enqueued) {
      ++stats_.expired;
      w->result = DeadlineExceeded("deadline exceeded before a runner was free");
    } else if (queue_.size() >= options_.max_queue_size) {
      ++stats_.rejected;
      w->result = ResourceExhausted("request queue is full (" +
                                    std::to_string(options_.max_queue_size) + " waiting)");
    } else {
      queue_.push_back(w);
      if (deadline < reaper_wake_) {
        reaper_wake_ = deadline;
        reaper_cv_.notify_one();
      }
      return w->ticket;
    }
  }
  const Ticket ticket = w->ticket;
  Finish({w});
  return ticket;
}

bool RunnerPool::Cancel(Ticket ticket) {
  Waiter* found = nullptr;
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
    ++stats_.cancelled;
  }
  Finish({found});
  return true;
}

Status RunnerPool::RunExclusive(const std::function<Status()>& fn) {
  std::lock_guard exclusive(exclusive_mu_);
  {
    std::unique_lock lock(mu_);
    if (stopping_) return Unavailable("runner pool is shutting down");
    paused_ = true;
    idle_cv_.wait(lock, [&] { return in_flight_ == 0; });
  }
  Status result = RunGuarded(fn);
  std::vector<Waiter*> finished;
  {
    std::lock_guard lock(mu_);
    paused_ = false;
    DispatchLocked(finished);
  }
  Finish(finished);
  return result;
}

void RunnerPool::Shutdown() {
  std::vector<Waiter*> finished;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    for (Waiter* w : queue_) {
      w->state = WaiterState::kFinished;
      w->result = Unavailable("runner pool is shutting down");
      ++stats_.rejected;
      if (w->cv) w->cv->notify_one(); else finished.push_back(w);
    }
    queue_.clear();
    reaper_cv_.notify_all();
  }
  Finish(finished);
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return in_flight_ == 0; });
  worker_cv_.notify_all();
}

RunnerPoolStats RunnerPool::stats() const {
  std::lock_guard lock(mu_);
  RunnerPoolStats s = stats_;
  s.queued = queue_.size();
  s.in_flight = in_flight_;
  return s;
}

void RunnerPool::WorkerLoop() {
  for (;;) {
    Waiter* w = nullptr;
    {
      std::unique_lock lock(mu_);
      worker_cv_.wait(lock, [&] { return !ready_.empty() || stopping_; });
      if (ready_.empty()) return;  // stopping_, nothing left to run
      w = ready_.front();
      ready_.pop_front();
    }
    const auto admitted = Clock::now();
    Status result = RunGuarded(w->work);
    const RequestTiming timing{admitted - w->enqueued, Clock::now() - admitted};
    ReleaseRunner(timing, result.ok());
    w->done(result, timing);
    delete w;
  }
}

void RunnerPool::ReaperLoop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    std::vector<Waiter*> finished;
    ExpireLocked(Clock::now(), finished);
    if (!finished.empty()) {
      lock.unlock();
      Finish(finished);
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
