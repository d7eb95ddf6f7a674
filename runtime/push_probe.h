// PushProbe: what one weight push cost, for ConstantBufferManager's
// status().last_push (PushMemory): memory peaks, the copies into the inactive
// buffers, and the host-to-device transfer of device staging. Internal to
// runtime/ (ConstantBufferManager and UploadSession).
//
// Thread-safety: not thread-safe; used by the push's writer (the thread that
// holds the model's writer slot).
#pragma once

#include <chrono>
#include <cstddef>
#include <vector>

#include "common/process_memory.h"
#include "common/status.h"
#include "common/tensor.h"
#include "devices/device.h"
#include "devices/device_staging.h"
#include "runtime/constant_buffer_manager.h"  // PushMemory

namespace pt2serve {

// Measures one push: the process's peak RSS (PeakRssWindow) and the used
// memory of the model's accelerators, sampled at each step (the container
// allocates its blobs outside the caching allocator, so only the driver's
// count sees them).
class PushProbe {
 public:
  explicit PushProbe(std::vector<DeviceSpec> devices);
  void Sample();
  // Ends the measurement.
  PushMemory Finish();

  // What the push reserved (or was refused), set by ReserveStaging.
  size_t staging = 0;
  // Copies into the inactive buffers (StageHoldingSlot), over all replicas.
  std::chrono::nanoseconds write_time{0};
  size_t written_bytes = 0;
  bool pinned = false;  // the copies read pinned staging memory
  bool device_staged = false;
  std::chrono::nanoseconds transfer_time{0};
  DeviceStaging::CopyStats device_copies;

 private:
  size_t DeviceUsed() const;

  const std::vector<DeviceSpec> devices_;
  PeakRssWindow window_;
  size_t before_ = 0;
  size_t peak_ = 0;
};

// The end of a device-staged transfer that began at `start`: waits for the
// queued copies unless `status` already failed, and notes the transfer in
// `probe`.
Status FinishTransfer(DeviceStaging& staging, Status status,
                      std::chrono::steady_clock::time_point start, PushProbe& probe);

// Points `t` at tensor `i` of the staging's transient device copy.
void TakeDeviceTensor(DeviceStaging& staging, size_t i, Tensor& t);

}  // namespace pt2serve
