#include "server/metrics.h"

#include <catch2/catch.hpp>

#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::server;

TEST_CASE("request metrics and scrape-time state render in Prometheus format", "[metrics]") {
  ModelRegistry registry;
  ModelConfig config;
  config.name = "m";
  config.path = testing::PackagePath("mlp");
  config.num_runners = 3;
  REQUIRE(registry.Load(config).ok());
  auto metrics = Metrics::Create("", registry);
  REQUIRE(metrics.ok());
  RequestTiming timing{std::chrono::microseconds(20), std::chrono::microseconds(300)};
  (*metrics)->RecordRequest("m", Protocol::kKServe, StatusCode::kOk, timing,
                            std::chrono::microseconds(400));
  (*metrics)->RecordRequest("m", Protocol::kNative, StatusCode::kInvalidArgument, {},
                            std::chrono::microseconds(10));
  const std::string text = (*metrics)->Render();
  CHECK_THAT(text, Catch::Contains(
                       R"(pt2serve_requests_total{code="OK",model="m",protocol="kserve"} 1)"));
  CHECK_THAT(text, Catch::Contains(
                       R"(pt2serve_requests_total{code="INVALID_ARGUMENT",model="m",protocol="pt2serve"} 1)"));
  CHECK_THAT(text, Catch::Contains("pt2serve_compute_duration_seconds_bucket"));
  CHECK_THAT(text, Catch::Contains(R"(pt2serve_model_runners{model="m"} 3)"));
  CHECK_THAT(text, Catch::Contains(R"(pt2serve_model_state{model="m",state="READY"} 1)"));
  CHECK_THAT(text, Catch::Contains(R"(pt2serve_weights_version_info{model="m",version="initial"} 1)"));
  CHECK((*metrics)->port() == 0);
}
