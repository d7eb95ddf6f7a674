#include "devices/cpu_isa.h"

#include <sys/utsname.h>

#include <catch2/catch.hpp>
#include <string>

using namespace pt2serve;

namespace {

std::string HostMachine() {
  utsname host{};
  REQUIRE(::uname(&host) == 0);
  return host.machine;
}

}  // namespace

TEST_CASE("packages built for this kind of host are accepted", "[cpu_isa]") {
  CHECK(CheckCpuCanRun("", "", "").ok());  // nothing recorded: nothing to check
  CHECK(CheckCpuCanRun("linux", HostMachine(), "").ok());
  CHECK(CheckCpuCanRun("", "", "SOMETHING_NEW").ok());  // names this build cannot check
  // Python's spelling on other systems means the same machine.
  if (HostMachine() == "x86_64") CHECK(CheckCpuCanRun("", "AMD64", "").ok());
}

TEST_CASE("packages built for another platform or machine are refused", "[cpu_isa]") {
  Status s = CheckCpuCanRun("win32", "", "");
  CHECK(s.code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(s.message(), Catch::Contains("win32"));
  s = CheckCpuCanRun("linux", "riscv64", "");
  CHECK(s.code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(s.message(), Catch::Contains("riscv64"));
}

#if defined(__x86_64__)
TEST_CASE("a vector ISA this CPU lacks is refused, naming the missing features", "[cpu_isa]") {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  CHECK(CheckCpuCanRun("linux", "x86_64", "AVX512").ok() == avx512);
  CHECK(CheckCpuCanRun("linux", "x86_64", "avx2").ok() ==
        (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")));
  if (!__builtin_cpu_supports("amx-tile")) {  // most CPUs: an AMX package is refused
    Status s = CheckCpuCanRun("linux", "x86_64", "AVX512 AVX512_VNNI AMX_TILE");
    CHECK(s.code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(s.message(), Catch::Contains("amx-tile"));
    CHECK_THAT(s.message(), Catch::Contains("AVX512 AVX512_VNNI AMX_TILE"));
  }
}
#endif
