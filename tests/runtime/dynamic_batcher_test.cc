#include "runtime/dynamic_batcher.h"

#include <catch2/catch.hpp>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

using namespace pt2serve;
using namespace std::chrono_literals;

namespace {

// Drives a DynamicBatcher over a real RunnerPool with an executor that
// records each batch (by request id) and can be held closed by the test.
struct Harness {
  explicit Harness(BatcherOptions options, size_t runners = 1)
      : pool(RunnerPoolOptions{runners, 16}) {
    options.max_batches_in_flight = runners;
    batcher = std::make_unique<DynamicBatcher>(
        std::move(options), pool, [this](const DynamicBatcher::Batch& batch, size_t) {
          std::vector<int> ids;
          for (const auto& e : batch) ids.push_back(*std::static_pointer_cast<int>(e->payload));
          {
            std::lock_guard lock(mu);
            batches.push_back(ids);
          }
          if (hold) gate.wait();
          for (const auto& e : batch) {
            const int id = *std::static_pointer_cast<int>(e->payload);
            batcher->Deliver(*e, [this, id] { Answer(id, "OK"); });
          }
        });
  }
  ~Harness() {
    Release();
    batcher->Shutdown();
    pool.Shutdown();
  }

  uint64_t Submit(int id, int64_t rows = 1, std::vector<int64_t> key = {1},
                  uint32_t priority = 0, Deadline deadline = kNoDeadline) {
    auto entry = std::make_shared<DynamicBatcher::Entry>();
    entry->rows = rows;
    entry->key = std::move(key);
    entry->priority = priority;
    entry->deadline = deadline;
    entry->payload = std::make_shared<int>(id);
    entry->fail = [this, id](const Status& s) { Answer(id, std::string(StatusCodeName(s.code()))); };
    return batcher->Submit(std::move(entry));
  }
  void Answer(int id, std::string what) {
    std::lock_guard lock(mu);
    answers.emplace_back(id, std::move(what));
    cv.notify_all();
  }
  // Waits until `n` requests were answered.
  void WaitAnswers(size_t n) {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return answers.size() >= n; }));
  }
  void WaitBatches(size_t n) {
    for (int i = 0; i < 10000; ++i) {
      {
        std::lock_guard lock(mu);
        if (batches.size() >= n) return;
      }
      std::this_thread::sleep_for(1ms);
    }
    FAIL("batches never started");
  }
  void Release() {
    if (hold.exchange(false)) opener.set_value();
  }
  std::string AnswerOf(int id) {
    std::lock_guard lock(mu);
    for (const auto& [i, what] : answers) {
      if (i == id) return what;
    }
    return "";
  }

  RunnerPool pool;
  std::unique_ptr<DynamicBatcher> batcher;
  std::atomic<bool> hold{false};
  std::promise<void> opener;
  std::shared_future<void> gate = opener.get_future().share();
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::vector<int>> batches;           // guarded by mu
  std::vector<std::pair<int, std::string>> answers;  // guarded by mu
};

BatcherOptions Options(int64_t max_batch, std::chrono::microseconds delay = 0us) {
  BatcherOptions o;
  o.max_batch_size = max_batch;
  o.max_queue_delay = delay;
  return o;
}

}  // namespace

TEST_CASE("requests queued while the runner is busy run as one batch", "[batcher]") {
  Harness h(Options(8));
  h.hold = true;
  h.Submit(0);      // runs alone (delay 0, runner free) and holds the runner
  h.WaitBatches(1);
  for (int i = 1; i <= 5; ++i) h.Submit(i);
  h.Release();
  h.WaitAnswers(6);
  std::lock_guard lock(h.mu);
  REQUIRE(h.batches.size() == 2);
  CHECK(h.batches[0] == std::vector<int>{0});
  CHECK(h.batches[1] == std::vector<int>{1, 2, 3, 4, 5});
}

TEST_CASE("max_batch_size caps rows; a request with other dims closes the batch", "[batcher]") {
  Harness h(Options(4));
  h.hold = true;
  h.Submit(0);
  h.WaitBatches(1);
  h.Submit(1, 2);
  h.Submit(2, 1);
  h.Submit(3, 2);             // 2+1+2 > 4: next batch
  h.Submit(4, 1, {7});        // other non-batch dims: a batch of its own
  h.Submit(5, 1);
  h.Release();
  h.WaitAnswers(6);
  std::lock_guard lock(h.mu);
  REQUIRE(h.batches.size() == 5);
  CHECK(h.batches[1] == std::vector<int>{1, 2});  // request 3 would make 5 rows
  CHECK(h.batches[2] == std::vector<int>{3});     // closed by request 4's other dims
  CHECK(h.batches[3] == std::vector<int>{4});
  // Request 5 waits behind 4 (FIFO: never reordered around a misfit).
  CHECK(h.batches[4] == std::vector<int>{5});
}

TEST_CASE("max_queue_delay lets requests arriving on an idle model share a batch",
          "[batcher]") {
  Harness h(Options(8, 200ms));
  for (int i = 0; i < 3; ++i) h.Submit(i);
  h.WaitAnswers(3);
  std::lock_guard lock(h.mu);
  REQUIRE(h.batches.size() == 1);
  CHECK(h.batches[0] == std::vector<int>{0, 1, 2});
}

TEST_CASE("a full batch or a preferred size goes out before the delay", "[batcher]") {
  SECTION("full") {
    Harness h(Options(2, 10s));
    const auto start = Clock::now();
    h.Submit(0);
    h.Submit(1);
    h.WaitAnswers(2);
    CHECK(Clock::now() - start < 5s);
  }
  SECTION("preferred") {
    BatcherOptions o = Options(8, 10s);
    o.preferred_batch_sizes = {2, 4};
    Harness h(o);
    const auto start = Clock::now();
    h.Submit(0);
    h.Submit(1);
    h.WaitAnswers(2);
    CHECK(Clock::now() - start < 5s);
    std::lock_guard lock(h.mu);
    CHECK(h.batches[0] == std::vector<int>{0, 1});
  }
}

TEST_CASE("higher priority levels are batched first; each level has its own limit",
          "[batcher]") {
  BatcherOptions o = Options(1);
  o.priority_levels = 2;
  o.default_priority_level = 2;
  o.max_queue_size = {4, 1};
  Harness h(o);
  h.hold = true;
  h.Submit(0);
  h.WaitBatches(1);
  h.Submit(1);                  // default level 2
  h.Submit(2, 1, {1}, 2);       // level 2 is full (1 waiting)
  h.Submit(3, 1, {1}, 1);
  CHECK(h.AnswerOf(2) == "RESOURCE_EXHAUSTED");
  h.Release();
  h.WaitAnswers(4);
  std::lock_guard lock(h.mu);
  REQUIRE(h.batches.size() == 3);
  CHECK(h.batches[1] == std::vector<int>{3});
  CHECK(h.batches[2] == std::vector<int>{1});
}

TEST_CASE("cancelled and expired requests leave without running", "[batcher]") {
  Harness h(Options(8));
  h.hold = true;
  h.Submit(0);
  h.WaitBatches(1);
  const uint64_t cancel_me = h.Submit(1);
  h.Submit(2, 1, {1}, 0, Clock::now() + 50ms);
  h.Submit(3);
  CHECK(h.batcher->Cancel(cancel_me));
  CHECK_FALSE(h.batcher->Cancel(cancel_me));
  CHECK(h.AnswerOf(1) == "CANCELLED");
  // Expiry is noticed while the runner is still busy, not when it frees.
  h.WaitAnswers(2);
  CHECK(h.AnswerOf(2) == "DEADLINE_EXCEEDED");
  h.Release();
  h.WaitAnswers(4);
  std::lock_guard lock(h.mu);
  REQUIRE(h.batches.size() == 2);
  CHECK(h.batches[1] == std::vector<int>{3});
  CHECK(h.batcher->stats().cancelled == 1);
  CHECK(h.batcher->stats().expired == 1);
}

TEST_CASE("preserve_ordering answers in arrival order across runners", "[batcher]") {
  BatcherOptions o = Options(1);
  o.preserve_ordering = true;
  Harness h(o, 2);
  h.hold = true;
  h.Submit(0);  // runner A, held
  h.WaitBatches(1);
  h.hold = false;  // the next batches run straight through
  h.Submit(1);  // runner B finishes first, but must wait for 0
  h.Submit(2);
  std::this_thread::sleep_for(50ms);
  {
    std::lock_guard lock(h.mu);
    CHECK(h.answers.empty());
  }
  h.opener.set_value();
  h.WaitAnswers(3);
  std::lock_guard lock(h.mu);
  CHECK(h.answers[0].first == 0);
  CHECK(h.answers[1].first == 1);
  CHECK(h.answers[2].first == 2);
}

TEST_CASE("shutdown answers queued requests UNAVAILABLE and refuses new ones", "[batcher]") {
  Harness h(Options(8));
  h.hold = true;
  h.Submit(0);
  h.WaitBatches(1);
  h.Submit(1);
  h.batcher->Shutdown();
  CHECK(h.AnswerOf(1) == "UNAVAILABLE");
  CHECK(h.Submit(2) == 0);
  CHECK(h.AnswerOf(2) == "UNAVAILABLE");
  h.Release();
  h.WaitAnswers(3);
  CHECK(h.AnswerOf(0) == "OK");
}
