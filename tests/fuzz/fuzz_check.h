// Shared by the fuzz targets (one LLVMFuzzerTestOneInput per file).
//
// A target feeds its input to a decoder and then checks properties the
// decoder promises (bounds, round trips, "accepted implies valid"). A broken
// property aborts with FUZZ_CHECK, so libFuzzer and the corpus replay driver
// (replay_main.cc) both report it as a crash; plain assert() would vanish in
// Release builds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: fuzz property failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                            \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
