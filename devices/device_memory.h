// Accelerator memory in use, for /metrics. Torch-free header.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace pt2serve {

// Memory the caching allocator of one accelerator holds.
struct DeviceMemory {
  std::string device;    // "cuda:0"
  size_t allocated = 0;  // bytes in live tensors
  size_t reserved = 0;   // bytes the caching allocator holds
};

// One entry per visible accelerator device whose allocator is initialized;
// empty on a CPU-only host. Best-effort: never throws.
std::vector<DeviceMemory> QueryDeviceMemory();

}  // namespace pt2serve
