#include "runtime/model_registry.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <future>
#include <thread>

#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::testing;
using namespace std::chrono_literals;

namespace {
ModelConfig Config(const std::string& name, const std::string& package, size_t runners = 1) {
  ModelConfig c;
  c.name = name;
  c.path = PackagePath(package);
  c.num_runners = runners;
  return c;
}
}  // namespace

TEST_CASE("load, list, get and unload", "[registry]") {
  // Declared before the registry: its destructor notifies the observer.
  std::vector<std::string> events;
  std::mutex mu;
  ModelRegistry registry;
  registry.AddObserver([&](const ModelStatus& s) {
    std::lock_guard l(mu);
    events.push_back(s.name + ":" + std::string(ModelStateName(s.state)));
  });
  REQUIRE(registry.Load(Config("a", "mlp")).ok());
  CHECK(registry.Load(Config("a", "mlp")).code() == StatusCode::kAlreadyExists);
  CHECK(registry.AllReady());
  auto list = registry.List();
  REQUIRE(list.size() == 1);
  CHECK(list[0].state == ModelState::kReady);
  CHECK(list[0].load_duration.count() > 0);
  {
    auto handle = registry.Get("a");
    REQUIRE(handle.ok());
    CHECK((*handle)->signature().inputs[0].name == "x");
  }
  CHECK(registry.Get("b").status().code() == StatusCode::kNotFound);
  REQUIRE(registry.Unload("a").ok());
  CHECK(registry.Get("a").status().code() == StatusCode::kNotFound);
  CHECK(registry.Unload("a").code() == StatusCode::kNotFound);
  CHECK(events == std::vector<std::string>{"a:LOADING", "a:READY", "a:UNLOADING", "a:UNLOADED"});
}

TEST_CASE("a failed load is reported and does not affect other models", "[registry]") {
  ModelRegistry registry;
  REQUIRE(registry.Load(Config("good", "mlp")).ok());
  ModelConfig bad = Config("bad", "mlp");
  bad.path = "/nonexistent.pt2";
  Status s = registry.Load(bad);
  CHECK(s.code() == StatusCode::kNotFound);
  auto status = registry.GetStatus("bad");
  REQUIRE(status.ok());
  CHECK(status->state == ModelState::kFailed);
  CHECK_THAT(status->reason, Catch::Contains("/nonexistent.pt2"));
  auto handle = registry.Get("bad");
  CHECK(handle.status().code() == StatusCode::kUnavailable);
  CHECK_THAT(handle.status().message(), Catch::Contains("FAILED"));
  CHECK_FALSE(registry.AllReady());
  CHECK(registry.Get("good").ok());
  // A failed entry can be retried with a good config.
  REQUIRE(registry.Load(Config("bad", "mlp")).ok());
  CHECK(registry.AllReady());
}

TEST_CASE("unload waits for requests holding the model", "[registry]") {
  ModelRegistry registry;
  REQUIRE(registry.Load(Config("m", "mlp")).ok());
  auto handle = registry.Get("m");
  REQUIRE(handle.ok());
  CHECK(registry.Unload("m", 50ms).code() == StatusCode::kDeadlineExceeded);
  CHECK(registry.GetStatus("m")->state == ModelState::kReady);  // still serving
  auto unload = std::async(std::launch::async, [&] { return registry.Unload("m", 10s); });
  std::this_thread::sleep_for(50ms);
  CHECK(unload.wait_for(0ms) == std::future_status::timeout);
  CHECK(registry.Get("m").status().code() == StatusCode::kUnavailable);  // UNLOADING
  CHECK((*handle)->Infer({"", LoadReference("mlp").inputs, {}, kNoDeadline}).ok());
  *handle = ModelHandle();
  CHECK(unload.get().ok());
}

TEST_CASE("unload during traffic: requests finish or get a clear status", "[registry]") {
  ModelRegistry registry;
  REQUIRE(registry.Load(Config("m", "mlp", 2)).ok());
  Reference ref = LoadReference("mlp");
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, not_found{0}, unavailable{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        auto handle = registry.Get("m");
        if (!handle.ok()) {
          auto code = handle.status().code();
          ++(code == StatusCode::kNotFound      ? not_found
             : code == StatusCode::kUnavailable ? unavailable
                                                : other);
          continue;
        }
        auto r = (*handle)->Infer({"", ref.inputs, {}, kNoDeadline});
        if (r.ok() && CompareTensors(r->outputs[0], ref.outputs[0]).empty()) {
          ++ok;
        } else {
          ++other;
        }
      }
    });
  }
  for (int cycle = 0; cycle < 5; ++cycle) {
    std::this_thread::sleep_for(20ms);
    REQUIRE(registry.Unload("m").ok());
    REQUIRE(registry.Load(Config("m", "mlp", 2)).ok());
  }
  std::this_thread::sleep_for(20ms);
  stop = true;
  for (auto& t : threads) t.join();
  CHECK(other == 0);
  CHECK(ok > 0);
  CHECK(not_found + unavailable > 0);
}

TEST_CASE("versions: the highest READY one serves, each can be named", "[registry]") {
  ModelRegistry registry;
  REQUIRE(registry.Load(Config("m", "mlp"), LoadOptions{1}).ok());
  REQUIRE(registry.Load(Config("m", "cnn"), LoadOptions{2}).ok());
  CHECK(registry.Load(Config("m", "mlp"), LoadOptions{2}).code() == StatusCode::kAlreadyExists);
  CHECK(registry.Load(Config("m", "mlp"), LoadOptions{0}).code() ==
        StatusCode::kInvalidArgument);
  CHECK(registry.Get("m")->version() == 2);
  CHECK(registry.Get("m", 1)->version() == 1);
  CHECK((*registry.Get("m", 1))->signature().inputs[0].name == "x");
  auto missing = registry.Get("m", 7);
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK_THAT(missing.status().message(), Catch::Contains("no version '7'") &&
                                            Catch::Contains("loaded: 1, 2"));
  REQUIRE(registry.List().size() == 1);  // one row per name: the serving version
  CHECK(registry.List()[0].version == 2);
  REQUIRE(registry.ListVersions().size() == 2);
  CHECK(registry.AllReady());

  // A FAILED newer version does not take traffic from the READY one.
  ModelConfig bad = Config("m", "mlp");
  bad.path = "/nonexistent.pt2";
  CHECK_FALSE(registry.Load(bad, LoadOptions{3}).ok());
  CHECK(registry.GetStatus("m", 3)->state == ModelState::kFailed);
  CHECK(registry.Get("m")->version() == 2);
  CHECK(registry.AllReady());

  REQUIRE(registry.Unload("m", 5s, 2).ok());
  CHECK(registry.Get("m")->version() == 1);
  REQUIRE(registry.Unload("m").ok());  // every version, the FAILED one included
  CHECK_FALSE(registry.Contains("m"));
  CHECK(registry.ListVersions().empty());
}

TEST_CASE("a load with keep_failed=false leaves nothing behind", "[registry]") {
  // Declared before the registry, whose destructor unloads "good" and
  // notifies the observer (TSan found it writing to the dead vector).
  std::vector<std::string> events;
  ModelRegistry registry;
  REQUIRE(registry.Load(Config("good", "mlp")).ok());
  registry.AddObserver([&](const ModelStatus& s) {
    events.push_back(s.name + ":" + std::string(ModelStateName(s.state)));
  });
  ModelConfig bad = Config("bad", "mlp");
  bad.path = "/nonexistent.pt2";
  Status s = registry.Load(bad, LoadOptions{1, /*keep_failed=*/false});
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK_FALSE(registry.Contains("bad"));
  CHECK(registry.AllReady());  // readiness is not affected
  CHECK(events == std::vector<std::string>{"bad:LOADING", "bad:FAILED"});
}
