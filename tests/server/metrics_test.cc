#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "server/metrics_http_server.h"
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

namespace {
// One HTTP exchange with the metrics server on 127.0.0.1:port.
std::string HttpRequest(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "connect failed";
  }
  (void)::send(fd, request.data(), request.size(), 0);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}
}  // namespace

TEST_CASE("the /metrics endpoint answers GET and refuses the rest", "[metrics]") {
  auto server = MetricsHttpServer::Start("127.0.0.1:0", [] { return std::string("a_metric 1\n"); });
  REQUIRE(server.ok());
  const int port = (*server)->port();
  REQUIRE(port > 0);
  const std::string ok = HttpRequest(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK_THAT(ok, Catch::StartsWith("HTTP/1.1 200 OK"));
  CHECK_THAT(ok, Catch::Contains("text/plain; version=0.0.4"));
  CHECK_THAT(ok, Catch::EndsWith("\r\n\r\na_metric 1\n"));
  CHECK_THAT(HttpRequest(port, "GET /other HTTP/1.1\r\n\r\n"), Catch::StartsWith("HTTP/1.1 404"));
  CHECK_THAT(HttpRequest(port, "POST /metrics HTTP/1.1\r\n\r\n"), Catch::StartsWith("HTTP/1.1 405"));
  CHECK_THAT(HttpRequest(port, "nonsense\r\n\r\n"), Catch::StartsWith("HTTP/1.1 400"));

  // The port is taken: a second server fails clearly.
  auto second = MetricsHttpServer::Start("127.0.0.1:" + std::to_string(port), [] { return std::string(); });
  CHECK(second.status().code() == StatusCode::kUnavailable);
  CHECK_THAT(second.status().message(), Catch::Contains("cannot serve /metrics"));
  CHECK(MetricsHttpServer::Start("nonsense", [] { return std::string(); }).status().code() ==
        StatusCode::kInvalidArgument);
}
