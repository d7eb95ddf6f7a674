// Whether this host's CPU can run the native code of a package.
//
// AOTInductor records the build host in a package's metadata: AOTI_PLATFORM
// (Python's sys.platform), AOTI_MACHINE (platform.machine()) and AOTI_CPU_ISA
// (the vector ISA Inductor compiled for, e.g. "AVX512 AVX512_VNNI"). Its C++
// (the CPU kernels, and the wrapper of every package) is built with
// -march=native, so on a CPU without that ISA the first request dies with
// SIGILL and takes the daemon with it. pt2serve refuses such a package when it
// loads instead. Only what the metadata names can be checked: -march=native
// may also use other instructions of the build host.
//
// Torch-free; thread-safe.
#pragma once

#include <string_view>

#include "common/status.h"

namespace pt2serve {

// OK when a package built on `platform` / `machine` with vector ISA `isa`
// (the metadata values; empty = not recorded, not checked) can run here;
// FAILED_PRECONDITION naming what differs otherwise. ISA names this build
// cannot check (other architectures' or unknown ones) are accepted.
Status CheckCpuCanRun(std::string_view platform, std::string_view machine, std::string_view isa);

}  // namespace pt2serve
