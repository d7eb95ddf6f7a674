// Feeds a DeviceStaging from several threads at once, as the file pipeline
// and an upload's copy tasks do: thread k copies every `threads`-th piece of
// `piece` bytes of every tensor (`sources[i]` holds tensor i's bytes).
// Returns the number of Copy calls that failed. Header-only: used by
// devices_test (CPU) and cuda_test.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

#include "devices/device_staging.h"

namespace pt2serve::testing {

inline int FeedInPieces(DeviceStaging& staging, const std::vector<std::vector<std::byte>>& sources,
                        size_t piece, size_t threads) {
  std::atomic<int> failures{0};
  std::vector<std::thread> workers;
  for (size_t k = 0; k < threads; ++k) {
    workers.emplace_back([&, k] {
      size_t n = 0;
      for (size_t i = 0; i < sources.size(); ++i) {
        const size_t size = sources[i].size();
        for (size_t off = 0; off < size; off += piece, ++n) {
          if (n % threads != k) continue;
          if (!staging.Copy(i, off, sources[i].data() + off, std::min(piece, size - off)).ok()) {
            ++failures;
          }
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  return failures.load();
}

}  // namespace pt2serve::testing
