// Dynamic batching through Model::InferAsync with real zoo packages: batched
// results equal the same requests run alone (which model_test checks against
// eager), bad configs and requests get clear errors, and one bad request does
// not fail the others in its batch.
#include <catch2/catch.hpp>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/model.h"
#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::testing;
using namespace std::chrono_literals;

namespace {

ModelConfig BatchedConfig(const std::string& name, BatchingConfig batching, size_t runners = 1,
                          Isolation isolation = Isolation::kInProcess) {
  ModelConfig config;
  config.name = name;
  config.path = PackagePath(name);
  config.num_runners = runners;
  config.isolation = isolation;
  batching.enabled = true;
  config.batching = batching;
  return config;
}

std::shared_ptr<Model> Load(const ModelConfig& config) {
  auto model = Model::Load(config);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return *model;
}

// Float input of `rows` rows whose values depend on `seed`.
Tensor Input(const std::string& name, int64_t rows, int64_t cols, int seed) {
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.01f * static_cast<float>((seed * 7 + i) % 50);
  return Tensor::FromVector(name, DType::kFloat32, {rows, cols}, std::move(v));
}

// Sends every request at once with InferAsync and waits for all replies.
std::vector<StatusOr<InferResponse>> SendAll(Model& model, std::vector<InferRequest> requests) {
  std::vector<std::promise<StatusOr<InferResponse>>> promises(requests.size());
  std::vector<std::future<StatusOr<InferResponse>>> futures;
  for (auto& p : promises) futures.push_back(p.get_future());
  for (size_t i = 0; i < requests.size(); ++i) {
    model.InferAsync(std::move(requests[i]),
                     [&promises, i](StatusOr<InferResponse> r) { promises[i].set_value(std::move(r)); });
  }
  std::vector<StatusOr<InferResponse>> out;
  for (auto& f : futures) {
    REQUIRE(f.wait_for(30s) == std::future_status::ready);
    out.push_back(f.get());
  }
  return out;
}

}  // namespace

TEST_CASE("batched requests get the results they get alone", "[model][batching]") {
  for (Isolation isolation : {Isolation::kInProcess, Isolation::kProcess}) {
    DYNAMIC_SECTION(IsolationName(isolation)) {
      BatchingConfig b;
      b.max_batch_size = 16;
      b.max_queue_delay = 20ms;  // every request below arrives within it
      auto model = Load(BatchedConfig("mlp", b, 1, isolation));
      std::vector<InferRequest> requests;
      for (int i = 0; i < 12; ++i) {
        InferRequest r;
        r.id = std::to_string(i);
        r.inputs.push_back(Input("x", 1 + i % 3, 16, i));
        requests.push_back(r);
      }
      auto expected = requests;
      auto results = SendAll(*model, requests);
      int64_t largest_batch = 0;
      uint64_t executions = 0;
      for (size_t i = 0; i < results.size(); ++i) {
        INFO("request " << i << ": " << results[i].status().ToString());
        REQUIRE(results[i].ok());
        CHECK(results[i]->id == std::to_string(i));
        auto alone = model->Infer(expected[i]);  // Infer() never batches
        REQUIRE(alone.ok());
        CHECK(results[i]->outputs[0].shape == alone->outputs[0].shape);
        CHECK(CompareTensors(results[i]->outputs[0], alone->outputs[0], 1e-5, 1e-6) == "");
        CHECK(results[i]->weights_version == "initial");
        largest_batch = std::max(largest_batch, results[i]->batch_rows);
        executions += results[i]->counts_execution ? 1 : 0;
      }
      CHECK(largest_batch > 3);  // requests were joined
      CHECK(executions < results.size());
      CHECK(model->batcher()->stats().batches == executions);
    }
  }
}

TEST_CASE("a bad request does not fail the others of its batch", "[model][batching]") {
  BatchingConfig b;
  b.max_batch_size = 8;
  b.max_queue_delay = 50ms;
  auto model = Load(BatchedConfig("checked", b));
  std::vector<InferRequest> requests;
  for (int i = 0; i < 4; ++i) {
    InferRequest r;
    Tensor probs = Input("probs", 1, 8, i);
    if (i == 2) {  // a negative probability trips the package's value check
      auto v = std::make_shared<std::vector<float>>(8, -1.0f);
      probs = Tensor::FromVector("probs", DType::kFloat32, {1, 8}, *v);
    }
    r.inputs.push_back(probs);
    requests.push_back(r);
  }
  auto results = SendAll(*model, requests);
  for (int i = 0; i < 4; ++i) {
    INFO("request " << i << ": " << results[i].status().ToString());
    CHECK(results[i].ok() == (i != 2));
  }
  CHECK_THAT(results[2].status().message(), Catch::Contains("non-negative"));
}

TEST_CASE("batching config and request errors name the problem", "[model][batching]") {
  auto load_error = [](ModelConfig config) {
    auto model = Model::Load(config);
    REQUIRE_FALSE(model.ok());
    CHECK(model.status().code() == StatusCode::kInvalidArgument);
    return model.status().message();
  };
  BatchingConfig b;
  SECTION("package without a dynamic batch dim") {
    ModelConfig config = BatchedConfig("mlp", b);
    config.path = PlainPackagePath("mlp");  // static shapes
    CHECK_THAT(load_error(config), Catch::Contains("no dynamic batch dimension"));
  }
  SECTION("max_batch_size over the package's limit") {
    b.max_batch_size = 4096;  // the zoo's batch dim ends at 1024
    CHECK_THAT(load_error(BatchedConfig("mlp", b)), Catch::Contains("1024"));
  }
  SECTION("preferred size out of range") {
    b.max_batch_size = 8;
    b.preferred_batch_sizes = {4, 16};
    CHECK_THAT(load_error(BatchedConfig("mlp", b)), Catch::Contains("preferred_batch_sizes"));
  }
  SECTION("default level outside the levels") {
    b.max_batch_size = 8;
    b.priority_levels = 2;
    b.default_priority_level = 3;
    CHECK_THAT(load_error(BatchedConfig("mlp", b)), Catch::Contains("default_priority_level"));
  }
  SECTION("requests") {
    b.max_batch_size = 4;
    b.priority_levels = 2;
    auto model = Load(BatchedConfig("mlp", b));
    InferRequest big;
    big.inputs.push_back(Input("x", 5, 16, 0));
    auto r = SendAll(*model, {big});
    CHECK(r[0].status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r[0].status().message(), Catch::Contains("max_batch_size 4"));
    InferRequest odd;
    odd.inputs.push_back(Input("x", 1, 16, 0));
    odd.priority = 3;
    r = SendAll(*model, {odd});
    CHECK(r[0].status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r[0].status().message(), Catch::Contains("priority 3"));
  }
}

// Issue 10's latency target: with max_queue_delay 0 a request that finds the
// queue empty and a runner free forms a batch of its own at once; for a short
// in-process CPU model it then runs on the submitting thread (as unbatched
// requests do) instead of paying a hand-off to a pool thread.
TEST_CASE("a lone batched request of a short CPU model runs on the caller's thread",
          "[model][batching]") {
  BatchingConfig b;
  b.max_batch_size = 8;
  auto model = Load(BatchedConfig("mlp", b, 2));
  const auto caller = std::this_thread::get_id();
  int here = 0;
  for (int i = 0; i < 200; ++i) {
    std::promise<std::pair<std::thread::id, StatusOr<InferResponse>>> seen;
    InferRequest request;
    request.inputs = {Input("x", 1, 16, i)};
    const uint64_t ticket = model->InferAsync(std::move(request), [&](StatusOr<InferResponse> r) {
      seen.set_value({std::this_thread::get_id(), std::move(r)});
    });
    auto [ran_on, response] = seen.get_future().get();
    REQUIRE(response.ok());
    CHECK(response->batch_rows == 1);
    InferRequest alone;
    alone.inputs = {Input("x", 1, 16, i)};
    auto expected = model->Infer(alone);  // Infer() never batches
    REQUIRE(expected.ok());
    CHECK(CompareTensors(response->outputs[0], expected->outputs[0]).empty());
    if (ran_on == caller) {
      ++here;
      CHECK(model->batcher()->stats().queued == 0);
    }
    CHECK(ticket != 0);  // a batcher ticket, whichever thread ran the batch
  }
  // The first call's cost is unknown, so it goes through a pool thread; on a
  // loaded machine the mean may drift above the limit for a while.
  INFO("batches on the caller's thread: " << here << " of 200");
  CHECK(here > 0);
  CHECK(model->batcher()->stats().batches == 200);
}

TEST_CASE("with a queue delay a lone batched request waits on the batcher, not the caller",
          "[model][batching]") {
  BatchingConfig b;
  b.max_batch_size = 8;
  b.max_queue_delay = 500us;  // the batch must wait for company
  auto model = Load(BatchedConfig("mlp", b, 2));
  const auto caller = std::this_thread::get_id();
  for (int i = 0; i < 20; ++i) {
    std::promise<std::thread::id> ran;
    InferRequest request;
    request.inputs = {Input("x", 1, 16, i)};
    model->InferAsync(std::move(request),
                      [&](StatusOr<InferResponse>) { ran.set_value(std::this_thread::get_id()); });
    CHECK(ran.get_future().get() != caller);
  }
}
