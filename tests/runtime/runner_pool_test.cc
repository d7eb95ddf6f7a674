#include "runtime/runner_pool.h"

#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <future>
#include <map>
#include <thread>
#include <vector>

using namespace pt2serve;
using namespace std::chrono_literals;

namespace {

// Counts how many Work closures run at once.
struct ConcurrencyProbe {
  std::atomic<int> inside{0};
  std::atomic<int> peak{0};
  Status Enter(std::chrono::microseconds hold) {
    int now = ++inside;
    int prev = peak.load();
    while (now > prev && !peak.compare_exchange_weak(prev, now)) {
    }
    std::this_thread::sleep_for(hold);
    --inside;
    return Status::Ok();
  }
};

// A gate the test opens to let blocked work finish.
struct Gate {
  std::promise<void> promise;
  std::shared_future<void> future = promise.get_future().share();
  void Open() { promise.set_value(); }
  Status Wait() {
    future.wait();
    return Status::Ok();
  }
};

}  // namespace

TEST_CASE("never more calls inside than runners, all complete", "[runner_pool]") {
  RunnerPool pool({/*num_runners=*/2, /*max_queue_size=*/64});
  ConcurrencyProbe probe;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        if (pool.Run([&](size_t) { return probe.Enter(100us); }).ok()) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ok == 400);
  CHECK(probe.peak == 2);
  auto stats = pool.stats();
  CHECK(stats.completed == 400);
  CHECK(stats.max_in_flight == 2);
  CHECK(stats.in_flight == 0);
  CHECK(stats.queued == 0);
}

TEST_CASE("async submissions respect the bound too", "[runner_pool]") {
  RunnerPool pool({2, 256});
  ConcurrencyProbe probe;
  std::atomic<int> done{0};
  for (int i = 0; i < 100; ++i) {
    pool.Submit([&](size_t) { return probe.Enter(50us); }, kNoDeadline,
                [&](const Status& s, const RequestTiming&) {
                  if (s.ok()) ++done;
                });
  }
  while (pool.stats().completed < 100) std::this_thread::sleep_for(1ms);
  CHECK(done == 100);
  CHECK(probe.peak <= 2);
}

TEST_CASE("at low load one pool worker serves every async request", "[runner_pool]") {
  // Requests one at a time, each after the previous one finished and its
  // worker went idle again: the most recently idle worker is woken each time,
  // so one warm thread does the work instead of the workers taking turns
  // (taking turns would give each of the 4 workers about a quarter).
  RunnerPool pool({4, 64});
  std::map<std::thread::id, int> served;
  for (int i = 0; i < 40; ++i) {
    std::promise<std::thread::id> ran;
    pool.Submit([&](size_t) { return Status::Ok(); }, kNoDeadline,
                [&](const Status&, const RequestTiming&) {
                  ran.set_value(std::this_thread::get_id());
                });
    ++served[ran.get_future().get()];
    std::this_thread::sleep_for(2ms);  // let the worker park again
  }
  int most = 0;
  for (const auto& [id, n] : served) most = std::max(most, n);
  INFO("requests spread over " << served.size() << " workers");
  CHECK(most >= 36);  // allows a few late re-parks on a loaded machine
}

TEST_CASE("queued requests are served in FIFO order", "[runner_pool]") {
  RunnerPool pool({1, 16});
  Gate gate;
  auto blocker = std::async(std::launch::async, [&] { return pool.Run([&](size_t) { return gate.Wait(); }); });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);
  std::mutex mu;
  std::vector<int> order;
  std::atomic<int> finished{0};
  for (int i = 0; i < 5; ++i) {
    pool.Submit(
        [&, i](size_t) {
          std::lock_guard l(mu);
          order.push_back(i);
          return Status::Ok();
        },
        kNoDeadline, [&](const Status&, const RequestTiming&) { ++finished; });
  }
  CHECK(pool.stats().queued == 5);
  gate.Open();
  CHECK(blocker.get().ok());
  while (finished < 5) std::this_thread::sleep_for(100us);
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
}

TEST_CASE("a full queue rejects at once with RESOURCE_EXHAUSTED", "[runner_pool]") {
  RunnerPool pool({1, 2});
  Gate gate;
  auto blocker = std::async(std::launch::async, [&] { return pool.Run([&](size_t) { return gate.Wait(); }); });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);
  std::atomic<int> finished{0};
  for (int i = 0; i < 2; ++i) {
    pool.Submit([](size_t) { return Status::Ok(); }, kNoDeadline,
                [&](const Status&, const RequestTiming&) { ++finished; });
  }
  Status rejected;
  pool.Submit([](size_t) { return Status::Ok(); }, kNoDeadline,
              [&](const Status& s, const RequestTiming&) { rejected = s; });
  CHECK(rejected.code() == StatusCode::kResourceExhausted);
  CHECK(pool.Run([](size_t) { return Status::Ok(); }).code() == StatusCode::kResourceExhausted);
  CHECK(pool.stats().rejected == 2);
  gate.Open();
  CHECK(blocker.get().ok());
  while (finished < 2) std::this_thread::sleep_for(100us);
}

TEST_CASE("requests whose deadline passes in the queue get DEADLINE_EXCEEDED", "[runner_pool]") {
  RunnerPool pool({1, 16});
  Gate gate;
  auto blocker = std::async(std::launch::async, [&] { return pool.Run([&](size_t) { return gate.Wait(); }); });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);

  std::promise<Status> async_result;
  pool.Submit([](size_t) { return Status::Ok(); }, Clock::now() + 20ms,
              [&](const Status& s, const RequestTiming&) { async_result.set_value(s); });
  const auto start = Clock::now();
  Status sync = pool.Run([](size_t) { return Status::Ok(); }, Clock::now() + 30ms);
  CHECK(sync.code() == StatusCode::kDeadlineExceeded);
  CHECK(Clock::now() - start < 2s);  // left the queue while the runner was still busy
  auto f = async_result.get_future();
  REQUIRE(f.wait_for(2s) == std::future_status::ready);
  CHECK(f.get().code() == StatusCode::kDeadlineExceeded);
  CHECK(pool.stats().expired == 2);
  CHECK(pool.stats().queued == 0);
  gate.Open();
  CHECK(blocker.get().ok());
}

TEST_CASE("a request already past its deadline is not run", "[runner_pool]") {
  RunnerPool pool({1, 16});
  Gate gate;
  auto blocker = std::async(std::launch::async, [&] { return pool.Run([&](size_t) { return gate.Wait(); }); });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);
  bool ran = false;
  Status s = pool.Run([&](size_t) { ran = true; return Status::Ok(); }, Clock::now() - 1ms);
  CHECK(s.code() == StatusCode::kDeadlineExceeded);
  CHECK_FALSE(ran);
  gate.Open();
  CHECK(blocker.get().ok());
}

TEST_CASE("Cancel removes a queued request", "[runner_pool]") {
  RunnerPool pool({1, 16});
  Gate gate;
  auto blocker = std::async(std::launch::async, [&] { return pool.Run([&](size_t) { return gate.Wait(); }); });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);
  Status got;
  bool ran = false;
  auto ticket = pool.Submit([&](size_t) { ran = true; return Status::Ok(); }, kNoDeadline,
                            [&](const Status& s, const RequestTiming&) { got = s; });
  CHECK(pool.Cancel(ticket));
  CHECK(got.code() == StatusCode::kCancelled);
  CHECK_FALSE(pool.Cancel(ticket));
  gate.Open();
  CHECK(blocker.get().ok());
  CHECK_FALSE(ran);
}

TEST_CASE("work errors and exceptions come back as statuses", "[runner_pool]") {
  RunnerPool pool({1, 4});
  CHECK(pool.Run([](size_t) { return InvalidArgument("bad"); }).code() == StatusCode::kInvalidArgument);
  Status s = pool.Run([](size_t) -> Status { throw std::runtime_error("boom"); });
  CHECK(s.code() == StatusCode::kInternal);
  CHECK_THAT(s.message(), Catch::Contains("boom"));
  CHECK(pool.stats().failed == 2);
  CHECK(pool.Run([](size_t) { return Status::Ok(); }).ok());  // the runner was released
}

TEST_CASE("RunExclusive waits for in-flight work and holds new work back", "[runner_pool]") {
  RunnerPool pool({2, 64});
  std::atomic<int> inside{0};
  std::atomic<bool> stop{false};
  std::atomic<int> violations{0};
  std::atomic<bool> exclusive{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        Status s = pool.Run([&](size_t) {
          ++inside;
          if (exclusive) ++violations;
          std::this_thread::sleep_for(200us);
          --inside;
          return Status::Ok();
        });
        if (!s.ok()) ++violations;
      }
    });
  }
  for (int i = 0; i < 50; ++i) {
    Status s = pool.RunExclusive([&] {
      exclusive = true;
      if (inside != 0) ++violations;
      std::this_thread::sleep_for(100us);
      exclusive = false;
      return Status::Ok();
    });
    CHECK(s.ok());
  }
  stop = true;
  for (auto& t : threads) t.join();
  CHECK(violations == 0);
  CHECK(pool.stats().failed == 0);
}

TEST_CASE("Shutdown fails queued requests and lets in-flight ones finish", "[runner_pool]") {
  auto pool = std::make_unique<RunnerPool>(RunnerPoolOptions{1, 16});
  Gate gate;
  auto blocker =
      std::async(std::launch::async, [&] { return pool->Run([&](size_t) { return gate.Wait(); }); });
  while (pool->stats().in_flight == 0) std::this_thread::sleep_for(100us);
  std::promise<Status> queued;
  pool->Submit([](size_t) { return Status::Ok(); }, kNoDeadline,
               [&](const Status& s, const RequestTiming&) { queued.set_value(s); });
  auto shutdown = std::async(std::launch::async, [&] { pool->Shutdown(); });
  CHECK(queued.get_future().get().code() == StatusCode::kUnavailable);
  CHECK(shutdown.wait_for(50ms) == std::future_status::timeout);  // waits for in-flight
  gate.Open();
  CHECK(blocker.get().ok());
  shutdown.get();
  CHECK(pool->Run([](size_t) { return Status::Ok(); }).code() == StatusCode::kUnavailable);
  pool.reset();
}

TEST_CASE("each in-flight request holds a distinct runner slot", "[runner_pool]") {
  RunnerPool pool({3, 64});
  std::array<std::atomic<int>, 3> users{};
  std::atomic<int> collisions{0}, out_of_range{0};
  auto work = [&](size_t runner) {
    if (runner >= users.size()) {
      ++out_of_range;
      return Status::Ok();
    }
    if (++users[runner] != 1) ++collisions;
    std::this_thread::sleep_for(50us);
    --users[runner];
    return Status::Ok();
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) (void)pool.Run(work);
    });
  }
  std::atomic<int> done{0};
  for (int i = 0; i < 100; ++i) {
    pool.Submit(work, kNoDeadline, [&](const Status&, const RequestTiming&) { ++done; });
  }
  for (auto& t : threads) t.join();
  while (done < 100) std::this_thread::sleep_for(1ms);
  CHECK(collisions == 0);
  CHECK(out_of_range == 0);
}

TEST_CASE("a waiter behind one that expires is not left beside a free runner",
          "[runner_pool][issue14]") {
  // The runner comes free while the head waiter A is inside its barging
  // window, so A is woken to take it; A's thread is slow to run (the test
  // hook holds it until the reaper has expired A). The next waiter B must
  // then get the runner at once, not sit beside it until its own deadline.
  // Before the fix the reaper removed A without handing the runner on, and
  // B ended with DEADLINE_EXCEEDED after 2 s.
  std::atomic<std::thread::id> slow_thread{};
  RunnerPoolOptions options(1, 16);
  options.barge_window = std::chrono::seconds(30);  // A is always woken, never granted
  RunnerPool* pool_ptr = nullptr;
  options.on_poked_for_test = [&] {
    if (std::this_thread::get_id() != slow_thread.load()) return;
    while (pool_ptr->stats().expired == 0) std::this_thread::sleep_for(100us);
  };
  RunnerPool pool(options);
  pool_ptr = &pool;

  Gate gate;
  auto blocker = std::async(std::launch::async, [&] {
    return pool.Run([&](size_t) { return gate.Wait(); });
  });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);
  auto a = std::async(std::launch::async, [&] {
    slow_thread = std::this_thread::get_id();
    return pool.Run([](size_t) { return Status::Ok(); }, Clock::now() + 200ms);
  });
  while (pool.stats().queued < 1) std::this_thread::sleep_for(100us);
  auto b = std::async(std::launch::async, [&] {
    return pool.Run([](size_t) { return Status::Ok(); }, Clock::now() + 2s);
  });
  while (pool.stats().queued < 2) std::this_thread::sleep_for(100us);
  gate.Open();
  CHECK(blocker.get().ok());
  CHECK(a.get().code() == StatusCode::kDeadlineExceeded);
  const Status b_result = b.get();
  CHECK(b_result.ok());  // served once A expired, not expired at its own deadline
  CHECK(pool.stats().expired == 1);
}

TEST_CASE("RunPriority is never refused for a full queue and goes ahead of requests",
          "[runner_pool][issue14]") {
  RunnerPool pool({1, 0});  // requests never wait
  Gate gate;
  auto blocker = std::async(std::launch::async, [&] { return pool.Run([&](size_t) { return gate.Wait(); }); });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);
  CHECK(pool.Run([](size_t) { return Status::Ok(); }).code() == StatusCode::kResourceExhausted);
  auto staged = std::async(std::launch::async, [&] {
    return pool.RunPriority(~uint64_t{0}, [](size_t) { return Status::Ok(); });
  });
  CHECK(staged.wait_for(50ms) == std::future_status::timeout);  // waits for the runner
  gate.Open();
  CHECK(blocker.get().ok());
  CHECK(staged.get().ok());
}

TEST_CASE("RunPriority runs on an allowed runner only, ahead of queued requests",
          "[runner_pool][issue14]") {
  RunnerPool pool({2, 16});
  Gate gate0;
  auto holder = std::async(std::launch::async, [&] {
    return pool.Run([&](size_t r) { return r == 0 ? gate0.Wait() : Internal("not runner 0"); });
  });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);
  std::atomic<int> ran_on{-1};
  auto staged = std::async(std::launch::async, [&] {
    return pool.RunPriority(uint64_t{1} << 0, [&](size_t r) {
      ran_on = static_cast<int>(r);
      return Status::Ok();
    });
  });
  CHECK(staged.wait_for(50ms) == std::future_status::timeout);  // runner 1 is free but not allowed
  gate0.Open();
  CHECK(holder.get().ok());
  CHECK(staged.get().ok());
  CHECK(ran_on == 0);
}

TEST_CASE("RunExclusive gives up at its drain deadline and the pool keeps serving",
          "[runner_pool][issue14]") {
  RunnerPool pool({2, 16});
  Gate hung;
  auto blocker = std::async(std::launch::async, [&] { return pool.Run([&](size_t) { return hung.Wait(); }); });
  while (pool.stats().in_flight == 0) std::this_thread::sleep_for(100us);
  bool ran = false;
  Status s = pool.RunExclusive([&] { ran = true; return Status::Ok(); }, Clock::now() + 50ms);
  CHECK(s.code() == StatusCode::kDeadlineExceeded);
  CHECK_THAT(s.message(), Catch::Contains("1 request(s) still running"));
  CHECK_FALSE(ran);
  CHECK(pool.Run([](size_t) { return Status::Ok(); }, Clock::now() + 2s).ok());
  hung.Open();
  CHECK(blocker.get().ok());
  CHECK(pool.RunExclusive([&] { ran = true; return Status::Ok(); }, Clock::now() + 2s).ok());
  CHECK(ran);
}

TEST_CASE("SubmitOrRunHere runs on the caller when a runner is free, else queues",
          "[runner_pool]") {
  static thread_local int initialised = 0;
  RunnerPool pool({/*num_runners=*/1, /*max_queue_size=*/8, [] { initialised = 7; }});
  const auto caller = std::this_thread::get_id();
  std::thread::id ran_on;
  bool done_called = false;
  initialised = 0;
  auto ticket = pool.SubmitOrRunHere(
      [&](size_t runner) {
        ran_on = std::this_thread::get_id();
        CHECK(runner == 0);
        CHECK(initialised == 7);  // the pool's per-thread settings, on this thread
        return Status::Ok();
      },
      kNoDeadline,
      [&](const Status& s, const RequestTiming& timing) {
        CHECK(s.ok());
        CHECK(timing.queue < std::chrono::milliseconds(100));  // no wait for a runner
        done_called = true;
      });
  CHECK(ticket == 0);
  CHECK(done_called);  // before SubmitOrRunHere returned
  CHECK(ran_on == caller);
  CHECK(pool.stats().completed == 1);

  // The only runner busy: the request goes through the queue to a pool thread.
  Gate gate;
  // (Catch2 v2 assertions are not thread-safe: other threads hand results back.)
  auto holder = std::async(std::launch::async, [&] {
    return pool.Run([&](size_t) { return gate.Wait(); });
  });
  while (pool.stats().in_flight == 0) std::this_thread::yield();
  std::promise<std::thread::id> queued_on;
  std::promise<Status> queued_status;
  ticket = pool.SubmitOrRunHere(
      [&](size_t) {
        queued_on.set_value(std::this_thread::get_id());
        return Status::Ok();
      },
      kNoDeadline, [&](const Status& s, const RequestTiming&) { queued_status.set_value(s); });
  CHECK(ticket != 0);
  gate.Open();
  CHECK(holder.get().ok());
  auto id = queued_on.get_future().get();
  CHECK(id != caller);
  CHECK(queued_status.get_future().get().ok());
}
