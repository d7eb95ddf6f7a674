#include "server/fault_injection.h"

#include <catch2/catch.hpp>

using namespace pt2serve;
using namespace pt2serve::server;

TEST_CASE("PT2SERVE_FAULT_INJECT specs parse or are refused naming the entry", "[faults]") {
  auto none = FaultInjection::Parse("");
  REQUIRE(none.ok());
  CHECK(none->empty());

  auto some = FaultInjection::Parse("stage_alloc:big:2-3,fold:mlp,swap:cnn:4-,fold:x:7");
  REQUIRE(some.ok());
  CHECK_FALSE(some->empty());
  CHECK(some->spec() == "stage_alloc:big:2-3,fold:mlp,swap:cnn:4-,fold:x:7");

  for (const char* bad : {"write:mlp", "stage_alloc", "stage_alloc:", "fold:mlp:0",
                          "fold:mlp:3-2", "fold:mlp:x", "swap:mlp:1-2-3", "swap:mlp:-4"}) {
    auto parsed = FaultInjection::Parse(bad);
    INFO(bad);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(parsed.status().message(), Catch::Contains("PT2SERVE_FAULT_INJECT entry '"));
  }
}
