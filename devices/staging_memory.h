// StagingMemory: host memory that weights land in on their way to a model's
// devices (an upload's chunks, a server-side file's bytes), before each
// replica copies them into its constant buffer.
//
// For a model on an accelerator it is page-locked ("pinned") memory from
// LibTorch's caching host allocator for that device type: the DMA engine
// reads it at bus speed (H200 host: 54 GB/s, against 5.4 GB/s from pageable
// memory, which the driver first copies through bounce buffers of its own).
// For CPU models, and where no host allocator is registered (a CPU-only
// LibTorch, MPS), it is ordinary heap memory.
//
// Pinning costs about what the first touch of fresh pageable memory costs,
// but it is paid when the buffer is allocated instead of while chunks arrive.
// Freed pinned blocks go back to LibTorch's cache; ReleaseCachedStagingMemory
// returns the unused ones to the system, so that a push holds its host
// memory only while it runs (what the staging budgets charge).
//
// Torch-free header. Thread-safety: every function may be called from any
// thread; a StagingMemory block is written by one thread at a time.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "common/status.h"
#include "devices/device.h"

namespace pt2serve {

struct StagingMemory {
  std::byte* data = nullptr;  // nbytes of uninitialized memory (never null)
  size_t nbytes = 0;
  bool pinned = false;
  // Frees (or returns to the cache) when the last holder lets go.
  std::shared_ptr<void> owner;
};

// `nbytes` (0 gives a 1-byte block) of staging memory for a model whose
// replicas run on `devices`; pinned when one of them is an accelerator with
// a registered host allocator. RESOURCE_EXHAUSTED when it cannot be had.
StatusOr<StagingMemory> AllocateStagingMemory(const std::vector<DeviceSpec>& devices,
                                              size_t nbytes);

// Host memory a block of `nbytes` holds once allocated: LibTorch's caching
// host allocator rounds pinned blocks up to a power of two (its default
// rounding), so this is what a push must reserve against its budgets.
size_t StagingFootprint(const std::vector<DeviceSpec>& devices, size_t nbytes);

// Whether AllocateStagingMemory gives pinned memory for `devices`.
bool HasPinnedStagingMemory(const std::vector<DeviceSpec>& devices);

// Gives the pinned blocks that nobody holds back to the system (no-op for
// CPU models). Blocks still in use stay valid.
void ReleaseCachedStagingMemory(const std::vector<DeviceSpec>& devices);

}  // namespace pt2serve
