#include "devices/device_executor.h"
#include "devices/device_memory.h"

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#if __has_include(<c10/core/CachingDeviceAllocator.h>)
#include <c10/core/CachingDeviceAllocator.h>
#define PT2SERVE_HAS_DEVICE_ALLOCATOR 1
#endif

#include <optional>

#include "devices/tensor_convert.h"

namespace pt2serve {
namespace {

std::string What(const std::exception& e) {
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) return c10e->what_without_backtrace();
  return e.what();
}


class CpuExecutor final : public DeviceExecutor {
 public:
  StatusOr<std::vector<at::Tensor>> Upload(const std::vector<const Tensor*>& inputs) override {
    std::vector<at::Tensor> out;
    out.reserve(inputs.size());
    for (const Tensor* t : inputs) {
      PT2_ASSIGN_OR_RETURN(at::Tensor a, ToAten(*t, DeviceSpec{}));
      out.push_back(std::move(a));
    }
    return out;
  }
  void* stream_handle() const override { return nullptr; }
  StatusOr<std::vector<at::Tensor>> RunOn(const RunFn& fn) override { return fn(nullptr); }
  StatusOr<Tensor> Download(const at::Tensor& output, std::string name) override {
    return FromAten(output, std::move(name));
  }
  Status Synchronize() override { return Status::Ok(); }
};

// CUDA / XPU / MPS through c10::impl::VirtualGuardImpl.
class AcceleratorExecutor final : public DeviceExecutor {
 public:
  AcceleratorExecutor(c10::Device device, c10::Stream stream)
      : device_(device), stream_(stream), guard_impl_(device.type()) {}

  StatusOr<std::vector<at::Tensor>> Upload(const std::vector<const Tensor*>& inputs) override {
    try {
      c10::StreamGuard on_stream(stream_);
      std::vector<at::Tensor> out;
      out.reserve(inputs.size());
      for (const Tensor* t : inputs) {
        PT2_ASSIGN_OR_RETURN(at::Tensor host, ToAten(*t, DeviceSpec{}));
        // Pinned staging (the caching host allocator reuses these blocks and
        // keeps each one until the stream that used it has finished).
        at::Tensor pinned = at::empty(host.sizes(), host.options().pinned_memory(true));
        pinned.copy_(host);
        at::Tensor dev = at::empty(host.sizes(), host.options().device(device_));
        dev.copy_(pinned, /*non_blocking=*/true);
        out.push_back(std::move(dev));
      }
      return out;
    } catch (const std::exception& e) {
      return Internal("copying inputs to " + device_.str() + ": " + What(e));
    }
  }

  void* stream_handle() const override { return stream_.native_handle(); }

  StatusOr<std::vector<at::Tensor>> RunOn(const RunFn& fn) override {
    try {
      c10::StreamGuard on_stream(stream_);  // also makes device_ current
      return fn(stream_.native_handle());
    } catch (const std::exception& e) {
      return Internal("running on " + device_.str() + ": " + What(e));
    }
  }

  StatusOr<Tensor> Download(const at::Tensor& output, std::string name) override {
    try {
      c10::StreamGuard on_stream(stream_);
      at::Tensor pinned = at::empty(output.sizes(),
                                    output.options().device(c10::kCPU).pinned_memory(true));
      pinned.copy_(output, /*non_blocking=*/true);
      guard_impl_.synchronizeStream(stream_);
      return FromAten(pinned, std::move(name));
    } catch (const std::exception& e) {
      return Internal("copying output '" + name + "' from " + device_.str() + ": " + What(e));
    }
  }

  Status Synchronize() override {
    try {
      guard_impl_.synchronizeStream(stream_);
      return Status::Ok();
    } catch (const std::exception& e) {
      return Internal("synchronizing " + device_.str() + ": " + What(e));
    }
  }

 private:
  const c10::Device device_;
  const c10::Stream stream_;
  const c10::impl::VirtualGuardImpl guard_impl_;
};

}  // namespace

StatusOr<std::unique_ptr<DeviceExecutor>> DeviceExecutor::Create(const DeviceSpec& device) {
  if (device.kind == DeviceKind::kCpu) return std::unique_ptr<DeviceExecutor>(new CpuExecutor);
  const c10::Device dev = ToC10Device(device);
  try {
    c10::impl::VirtualGuardImpl impl(dev.type());
    std::optional<c10::Stream> stream;
    try {
      stream = impl.getNewStream(dev);  // a stream of this runner's own
    } catch (const c10::Error&) {
      stream = impl.getDefaultStream(dev);  // backends with one stream (MPS)
    }
    return std::unique_ptr<DeviceExecutor>(new AcceleratorExecutor(dev, *stream));
  } catch (const std::exception& e) {
    return FailedPrecondition("cannot create a stream on " + device.ToString() + ": " + What(e));
  }
}

Status SynchronizeDevice(const DeviceSpec& device) {
  if (device.kind == DeviceKind::kCpu) return Status::Ok();
  const c10::Device dev = ToC10Device(device);
  try {
    c10::impl::VirtualGuardImpl(dev.type()).synchronizeDevice(dev.index());
    return Status::Ok();
  } catch (const std::exception& e) {
    return Internal("synchronizing " + dev.str() + ": " + What(e));
  }
}

#ifdef PT2SERVE_HAS_DEVICE_ALLOCATOR
namespace {
// (free, total) from allocators that implement getMemoryInfo (newer torch).
template <typename Allocator>
std::optional<std::pair<size_t, size_t>> MemoryInfo(Allocator* allocator, c10::DeviceIndex index) {
  if constexpr (requires { allocator->getMemoryInfo(index); }) {
    return allocator->getMemoryInfo(index);
  } else {
    return std::nullopt;
  }
}
}  // namespace
#endif

std::optional<size_t> DeviceBytesInUse(const DeviceSpec& device) {
  if (device.kind == DeviceKind::kCpu) return std::nullopt;
#ifdef PT2SERVE_HAS_DEVICE_ALLOCATOR
  try {
    const c10::Device dev = ToC10Device(device);
    auto* allocator = dynamic_cast<c10::DeviceAllocator*>(c10::GetAllocator(dev.type()));
    if (!allocator) return std::nullopt;
    const auto info = MemoryInfo(allocator, dev.index());
    if (!info || info->second < info->first) return std::nullopt;
    return info->second - info->first;
  } catch (const std::exception&) {
    return std::nullopt;
  }
#else
  return std::nullopt;
#endif
}

std::vector<DeviceMemory> QueryDeviceMemory() {
  std::vector<DeviceMemory> out;
#ifdef PT2SERVE_HAS_DEVICE_ALLOCATOR
  try {
    if (!at::hasCUDA()) return out;
    auto* allocator = dynamic_cast<c10::DeviceAllocator*>(c10::GetAllocator(c10::DeviceType::CUDA));
    if (!allocator || !allocator->initialized()) return out;
    const int count = at::detail::getCUDAHooks().getNumGPUs();
    for (int i = 0; i < count; ++i) {
      const auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(i));
      constexpr size_t kAggregate = 0;
      out.push_back({"cuda:" + std::to_string(i),
                     static_cast<size_t>(stats.allocated_bytes[kAggregate].current),
                     static_cast<size_t>(stats.reserved_bytes[kAggregate].current)});
    }
  } catch (const std::exception&) {
    // Metrics are best-effort: a backend without stats reports nothing.
  }
#endif
  return out;
}

}  // namespace pt2serve
