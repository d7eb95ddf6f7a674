#include "devices/staging_memory.h"

#include <ATen/core/CachingHostAllocator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <bit>
#include <new>
#include <optional>
#include <string>

#include "devices/tensor_convert.h"

namespace pt2serve {
namespace {

// The device type whose host allocator pins memory for `devices`, if any.
std::optional<c10::DeviceType> PinningDeviceType(const std::vector<DeviceSpec>& devices) {
  for (const DeviceSpec& d : devices) {
    if (d.kind != DeviceKind::kCpu) return ToC10Device(d).type();
  }
  return std::nullopt;
}

// LibTorch's caching host allocator for `type`, or null when the linked
// LibTorch has none (getHostAllocator throws for unregistered types).
at::HostAllocator* HostAllocatorFor(c10::DeviceType type) {
  try {
    return at::getHostAllocator(type);
  } catch (const c10::Error&) {
    return nullptr;
  }
}

}  // namespace

bool HasPinnedStagingMemory(const std::vector<DeviceSpec>& devices) {
  auto type = PinningDeviceType(devices);
  return type && HostAllocatorFor(*type) != nullptr;
}

size_t StagingFootprint(const std::vector<DeviceSpec>& devices, size_t nbytes) {
  if (!HasPinnedStagingMemory(devices)) return nbytes;
  return std::bit_ceil(std::max<size_t>(nbytes, 1));
}

StatusOr<StagingMemory> AllocateStagingMemory(const std::vector<DeviceSpec>& devices,
                                              size_t nbytes) {
  const size_t size = std::max<size_t>(nbytes, 1);
  StagingMemory block;
  block.nbytes = nbytes;
  if (auto type = PinningDeviceType(devices)) {
    if (at::HostAllocator* allocator = HostAllocatorFor(*type)) {
      try {
        auto data_ptr = std::make_shared<c10::DataPtr>(allocator->allocate(size));
        block.data = static_cast<std::byte*>(data_ptr->get());
        block.pinned = true;
        block.owner = std::move(data_ptr);
        return block;
      } catch (const c10::Error& e) {
        return ResourceExhausted("cannot allocate " + std::to_string(nbytes) +
                                 " bytes of pinned host memory: " + e.what_without_backtrace());
      }
    }
  }
  // Default-initialized: no time spent zeroing memory the caller overwrites.
  std::shared_ptr<std::byte[]> heap(new (std::nothrow) std::byte[size]);
  if (!heap) {
    return ResourceExhausted("cannot allocate " + std::to_string(nbytes) + " bytes of host memory");
  }
  block.data = heap.get();
  block.owner = std::move(heap);
  return block;
}

void ReleaseCachedStagingMemory(const std::vector<DeviceSpec>& devices) {
  auto type = PinningDeviceType(devices);
  if (!type) return;
  if (at::HostAllocator* allocator = HostAllocatorFor(*type)) {
    try {
      allocator->empty_cache();
    } catch (const c10::Error&) {
      // Best-effort: the blocks stay cached and are reused by the next push.
    }
  }
}

}  // namespace pt2serve
