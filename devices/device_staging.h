// DeviceStaging: moves a weight set from host memory into freshly allocated
// memory on one accelerator, while the bytes are still arriving (a file
// being read and hashed, an upload being received).
//
// Each Copy() goes through a small ring of pinned host blocks: the caller's
// bytes are copied into a free block and the block is copied to the device
// asynchronously on a stream of the staging's own, so the host-to-device
// copy reads pinned memory at bus speed and overlaps with whatever produces
// the next bytes. Pinning only the ring (at most kBlocks x kBlockBytes,
// less for a smaller set: RingBytes) instead of the whole set keeps a push
// from paying to pin gigabytes of host memory (measured on the H200 host:
// pinning cost about what it saved).
//
// The device tensors are a transient copy: the caller writes them into the
// model's inactive constant buffer (a device-to-device copy) once the set is
// complete and its checksum matched, and drops them. A bad set therefore
// never touches the constant buffers.
//
// On a CPU "device" (tests) the ring is ordinary memory and copies are
// synchronous; everything else is the same.
//
// Torch-free header. Thread-safety: Copy() may be called from several
// threads at once (each call owns the blocks it takes); Finish() and
// TakeTensor() from one thread after every Copy() returned.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <vector>

#include "common/status.h"
#include "devices/device.h"

namespace pt2serve {

class DeviceStaging {
 public:
  // Large blocks: the DMA engine reads pinned memory that the CPU has just
  // written faster in large copies (H200 host, torch model of this ring:
  // 42.3 GB/s in 8 MiB copies, 47.1 in 16 MiB, 50.7 in 32 MiB; 55 for a
  // plain 2 GiB copy). Four of 16 MiB keep the ring at 64 MiB of pinned
  // memory, which the push pins anew each time.
  static constexpr size_t kBlockBytes = 16 << 20;
  static constexpr size_t kBlocks = 4;
  // Host memory the ring holds at most.
  static constexpr size_t kRingBytes = kBlocks * kBlockBytes;
  // Host memory the ring of a set of `set_bytes` holds (for the staging
  // budgets): as many blocks as the set fills, at most kBlocks; a set smaller
  // than one block gets one block of its own size.
  static size_t RingBytes(size_t set_bytes);

  // What the copies to the device did (Stats()).
  struct CopyStats {
    size_t bytes = 0;   // copied to the device
    size_t copies = 0;  // block copies queued
    // Sum of the copies' own durations, measured on the device (events
    // around each copy; copies on one stream never overlap). bytes / busy
    // is the host-to-device rate while copying, whatever kept the stream
    // waiting in between (hashing, the network).
    std::chrono::nanoseconds busy{0};
  };

  // Allocates one uninitialized device buffer of tensor_bytes[i] bytes per
  // tensor and the ring. RESOURCE_EXHAUSTED when the device (or pinned host)
  // memory cannot be had; UNIMPLEMENTED when the device type has no pinned
  // host allocator (ConstantBufferManager uses device staging only where
  // HasPinnedStagingMemory says there is one, so there this is an error).
  static StatusOr<std::unique_ptr<DeviceStaging>> Create(const DeviceSpec& device,
                                                         const std::vector<size_t>& tensor_bytes);
  // Waits for the copies in flight (they read the ring and write buffers
  // that die here).
  ~DeviceStaging();
  DeviceStaging(const DeviceStaging&) = delete;
  DeviceStaging& operator=(const DeviceStaging&) = delete;

  // Queues a copy of [src, src + size) into tensor `tensor` at byte `offset`
  // and returns once `src` may be reused (the bytes are in a ring block).
  // REQUIRES: the range lies inside the tensor. INTERNAL when the device
  // refuses the copy.
  Status Copy(size_t tensor, size_t offset, const std::byte* src, size_t size);

  // Waits until every queued copy has reached the device. Errors of
  // asynchronous copies surface here.
  Status Finish();

  // The device memory of tensor `i`: its address, kept alive by the returned
  // owner (a LibTorch tensor). REQUIRES: Finish() returned OK.
  std::shared_ptr<const void> TakeTensor(size_t i, const std::byte** data);

  // REQUIRES: Finish() returned OK.
  CopyStats Stats() const;

 private:
  struct Impl;
  explicit DeviceStaging(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pt2serve
