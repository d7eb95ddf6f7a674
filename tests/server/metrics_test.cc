#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <vector>

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
// A connected TCP socket to 127.0.0.1:port (-1 on failure).
int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// One HTTP exchange with the metrics server on 127.0.0.1:port.
std::string HttpRequest(int port, const std::string& request) {
  const int fd = Connect(port);
  if (fd < 0) return "connect failed";
  (void)::send(fd, request.data(), request.size(), 0);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}
}  // namespace

TEST_CASE("the /metrics endpoint answers GET and refuses the rest", "[metrics]") {
  ModelRegistry registry;
  auto metrics = Metrics::Create("127.0.0.1:0", registry);
  REQUIRE(metrics.ok());
  (*metrics)->RecordRequest("m", Protocol::kKServe, StatusCode::kOk, {},
                            std::chrono::microseconds(400));
  const int port = (*metrics)->port();
  REQUIRE(port > 0);
  const std::string ok = HttpRequest(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK_THAT(ok, Catch::StartsWith("HTTP/1.1 200 OK"));
  CHECK_THAT(ok, Catch::Contains("Content-Type: text/plain"));
  CHECK_THAT(ok, Catch::Contains(R"(pt2serve_requests_total{code="OK",model="m",protocol="kserve"} 1)"));
  CHECK_THAT(HttpRequest(port, "GET /other HTTP/1.1\r\n\r\n"), Catch::StartsWith("HTTP/1.1 404"));
  CHECK_THAT(HttpRequest(port, "nonsense\r\n\r\n"), Catch::Contains(" 400 Bad Request"));

  // The port is taken: a second server fails clearly.
  auto second = Metrics::Create("127.0.0.1:" + std::to_string(port), registry);
  CHECK(second.status().code() == StatusCode::kUnavailable);
  CHECK_THAT(second.status().message(), Catch::Contains("cannot serve /metrics"));
  CHECK(Metrics::Create("nonsense", registry).status().code() == StatusCode::kInvalidArgument);
  CHECK(Metrics::Create("127.0.0.1:http", registry).status().code() ==
        StatusCode::kInvalidArgument);
}

TEST_CASE("silent and trickling /metrics clients block neither scrapers nor shutdown",
          "[metrics]") {
  ModelRegistry registry;
  auto metrics = Metrics::Create("127.0.0.1:0", registry);
  REQUIRE(metrics.ok());
  const int port = (*metrics)->port();
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) idle.push_back(Connect(port));  // connect, never send
  const int trickler = Connect(port);
  REQUIRE(trickler >= 0);
  (void)::send(trickler, "GET /met", 8, 0);  // a request that never completes
  const auto start = std::chrono::steady_clock::now();
  CHECK_THAT(HttpRequest(port, "GET /metrics HTTP/1.1\r\n\r\n"), Catch::StartsWith("HTTP/1.1 200"));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(1));
  // Stopping does not wait for the clients to finish or go away (civetweb
  // checks its stop flag every 2 s while it waits on a socket).
  const auto stop = std::chrono::steady_clock::now();
  metrics->reset();
  CHECK(std::chrono::steady_clock::now() - stop < std::chrono::milliseconds(2500));
  for (int fd : idle) ::close(fd);
  ::close(trickler);
}

TEST_CASE("an unloaded model's series leave /metrics", "[metrics]") {
  ModelRegistry registry;
  ModelConfig config;
  config.name = "gone";
  config.path = testing::PackagePath("mlp");
  auto metrics = Metrics::Create("", registry);
  REQUIRE(metrics.ok());
  registry.AddObserver([m = metrics->get()](const ModelStatus& s) { m->RecordStateChange(s); });
  REQUIRE(registry.Load(config).ok());
  (*metrics)->RecordRequest("gone", Protocol::kKServe, StatusCode::kOk, {},
                            std::chrono::microseconds(400));
  (*metrics)->RecordRequest("gone", Protocol::kNative, StatusCode::kNotFound, {},
                            std::chrono::microseconds(4));
  (*metrics)->RecordRequest("kept", Protocol::kKServe, StatusCode::kOk, {},
                            std::chrono::microseconds(4));
  REQUIRE_THAT((*metrics)->Render(), Catch::Contains(R"(model="gone")"));
  REQUIRE(registry.Unload("gone").ok());
  const std::string text = (*metrics)->Render();
  CHECK_THAT(text, !Catch::Contains(R"(model="gone")"));
  CHECK_THAT(text, Catch::Contains(R"(pt2serve_requests_total{code="OK",model="kept",protocol="kserve"} 1)"));
}
