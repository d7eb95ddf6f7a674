#include "devices/device.h"

#include <catch2/catch.hpp>

using namespace pt2serve;

TEST_CASE("device strings parse", "[device]") {
  CHECK(DeviceSpec::Parse("cpu")->kind == DeviceKind::kCpu);
  auto cuda = DeviceSpec::Parse("cuda:1");
  REQUIRE(cuda.ok());
  CHECK(cuda->index == 1);
  CHECK(cuda->ToString() == "cuda:1");
  CHECK(DeviceSpec::Parse("mps")->key() == "mps");
  CHECK(DeviceSpec::Parse("xpu:0")->ToString() == "xpu:0");
  CHECK(DeviceSpec::Parse("cuda:x").status().code() == StatusCode::kInvalidArgument);
  CHECK(DeviceSpec::Parse("cuda:-1").status().code() == StatusCode::kInvalidArgument);
  CHECK(DeviceSpec::Parse("cpu:3").status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(DeviceSpec::Parse("tpu").status().message(), Catch::Contains("unknown device 'tpu'"));
}

TEST_CASE("the package's device key decides, the config may only narrow it", "[device]") {
  CHECK(ResolveDevice("auto", "cpu")->kind == DeviceKind::kCpu);
  CHECK(ResolveDevice("", "cuda")->ToString() == "cuda:0");
  CHECK(ResolveDevice("cuda:2", "cuda")->index == 2);
  CHECK_THAT(ResolveDevice("cpu", "cuda").status().message(),
             Catch::Contains("compiled for device 'cuda'"));
}

TEST_CASE("host support checks never throw", "[device]") {
  CHECK(CheckHostSupports({DeviceKind::kCpu, -1}).ok());
  // On a host without the backend these fail with FAILED_PRECONDITION; on a
  // host that has it they succeed. Either way they return a status.
  for (auto kind : {DeviceKind::kCuda, DeviceKind::kXpu, DeviceKind::kMps}) {
    Status s = CheckHostSupports({kind, 0});
    CHECK((s.ok() || s.code() == StatusCode::kFailedPrecondition));
  }
  Status far = CheckHostSupports({DeviceKind::kCuda, 999});
  CHECK(far.code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("device lists split into replicas", "[device]") {
  CHECK(*SplitDeviceList("auto") == std::vector<std::string>{"auto"});
  CHECK(*SplitDeviceList("cuda:0,cuda:1") == std::vector<std::string>{"cuda:0", "cuda:1"});
  CHECK_THAT(SplitDeviceList("cuda:0,cuda:0").status().message(), Catch::Contains("listed twice"));
}
