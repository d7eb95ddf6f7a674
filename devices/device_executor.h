// DeviceExecutor: how one runner moves tensors to and from its device.
//
// Internal to runtime/ and devices/ (it exposes LibTorch types). The runtime
// keeps one executor per runner slot; a slot is used by one request at a
// time, so an executor needs no locking.
//
// CPU: inputs are wrapped without copying, outputs are read in place.
// Accelerators (CUDA, XPU, MPS), through c10's device-generic stream API, so
// no CUDA headers or #ifdefs are needed: each runner owns its own stream;
// inputs are staged through pinned host memory and copied asynchronously on
// that stream; the container runs on that stream; outputs come back through
// pinned memory on the same stream, and Download() waits for the stream. So
// when a request releases its runner, no GPU work of it is pending: a weight
// swap that waits for in-flight requests also waits for their streams.
#pragma once

#include <ATen/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "devices/device.h"

namespace pt2serve {

class DeviceExecutor {
 public:
  // One executor for a runner on `device`.
  static StatusOr<std::unique_ptr<DeviceExecutor>> Create(const DeviceSpec& device);
  virtual ~DeviceExecutor() = default;

  // Host tensors -> tensors on the device (queued on this runner's stream).
  virtual StatusOr<std::vector<at::Tensor>> Upload(const std::vector<const Tensor*>& inputs) = 0;
  // The stream handle to pass to the AOTI container's run(); nullptr = the
  // backend's current stream (CPU).
  virtual void* stream_handle() const = 0;
  // Runs `fn` with this runner's device and stream current on the calling
  // thread (the container allocates on the current device), passing
  // stream_handle(). LibTorch exceptions become statuses.
  using RunFn = std::function<StatusOr<std::vector<at::Tensor>>(void* stream)>;
  virtual StatusOr<std::vector<at::Tensor>> RunOn(const RunFn& fn) = 0;
  // Device outputs -> host tensors; returns once they are on the host.
  virtual StatusOr<Tensor> Download(const at::Tensor& output, std::string name) = 0;
  // Waits for all work queued on this runner's stream.
  virtual Status Synchronize() = 0;
};

// Blocks until all work queued on `device`, on every stream, has finished; a
// no-op on CPU. Weight staging (update + constant fold) is queued on the
// device's default stream, which does not order itself with the runners'
// non-blocking streams: staging calls this before it reports success, so a
// request that runs after the swap never reads a buffer still being written.
Status SynchronizeDevice(const DeviceSpec& device);


}  // namespace pt2serve
