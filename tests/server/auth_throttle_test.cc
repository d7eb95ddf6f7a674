#include "server/auth_throttle.h"

#include <catch2/catch.hpp>

#include "common/limits.h"

using namespace pt2serve;
using namespace pt2serve::server;

TEST_CASE("a host is refused after kMaxFailures failures until the window passes", "[auth]") {
  AuthThrottle throttle;
  const auto t0 = AuthThrottle::Clock::now();
  const std::string peer = "ipv4:10.0.0.1:5000";
  for (int i = 0; i < AuthThrottle::kMaxFailures; ++i) {
    REQUIRE(throttle.Admit(peer, t0).ok());
    throttle.RecordFailure(peer, Unauthenticated("invalid admin token"), t0);
  }
  // Another port of the same host is the same host; another host is not.
  const Status refused = throttle.Admit("ipv4:10.0.0.1:6000", t0 + std::chrono::seconds(1));
  CHECK(refused.code() == StatusCode::kResourceExhausted);
  CHECK_THAT(refused.message(), Catch::Contains("retry in 9 s"));
  CHECK(throttle.Admit("ipv4:10.0.0.2:5000", t0).ok());
  // A flood while refused does not extend the lock-out.
  for (int i = 0; i < 1000; ++i) {
    throttle.RecordFailure(peer, Unauthenticated("x"), t0 + std::chrono::seconds(5));
  }
  CHECK(throttle.total_failures() == 1000u + AuthThrottle::kMaxFailures);
  CHECK(throttle.Admit(peer, t0 + AuthThrottle::kWindow).ok());
}

TEST_CASE("peer strings reduce to their host", "[auth]") {
  CHECK(AuthThrottle::HostOf("ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1");
  CHECK(AuthThrottle::HostOf("ipv6:[::1]:5555") == "ipv6:[::1]");
  CHECK(AuthThrottle::HostOf("unix:/run/x.sock") == "unix:/run/x.sock");
}

TEST_CASE("client strings are printable, bounded and length-checked", "[limits]") {
  CHECK(Printable("a\nb\r\x01\\") == "a\\nb\\r\\x01\\\\");
  CHECK(Printable(std::string(100, 'x'), 4) == "xxxx...(100 bytes)");
  CHECK(CheckLength("model name", std::string(257, 'm'), kMaxModelNameBytes).message() ==
        "model name is 257 bytes long (at most 256)");
  CHECK(CheckLength("model name", "mlp", kMaxModelNameBytes).ok());
}
