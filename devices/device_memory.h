// Accelerator memory in use, for /metrics. Torch-free header.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "devices/device.h"

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

// Bytes in use on `device` as its driver reports them (total minus free:
// every allocation, by any allocator or process, counts). AOTInductor
// allocates constant blobs outside the caching allocator, which is why
// weight accounting uses this. nullopt for the CPU, or when the backend
// cannot tell. Best-effort: never throws.
std::optional<size_t> DeviceBytesInUse(const DeviceSpec& device);

}  // namespace pt2serve
