#include "devices/device_staging.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>

#include "devices/tensor_convert.h"

namespace pt2serve {

struct DeviceStaging::Impl {
  struct Block {
    at::Tensor host;                 // kBlockBytes; pinned when async
    std::optional<c10::Event> done;  // recorded after the block's last copy
  };

  c10::Device device{c10::kCPU};
  bool async = false;                 // an accelerator: copies on `stream`
  std::optional<c10::Stream> stream;  // set when async
  std::vector<at::Tensor> tensors;    // 1-D kByte buffers on `device`
  std::vector<Block> blocks;

  std::mutex mu;
  std::condition_variable freed;
  std::vector<size_t> free_blocks;  // guarded by mu

  // Waits for a free block, then for the device to be done reading it.
  StatusOr<size_t> Acquire() {
    size_t b = 0;
    {
      std::unique_lock lock(mu);
      freed.wait(lock, [&] { return !free_blocks.empty(); });
      b = free_blocks.back();
      free_blocks.pop_back();
    }
    try {
      if (blocks[b].done) blocks[b].done->synchronize();
    } catch (const c10::Error& e) {
      Release(b);
      return Internal(std::string("staging copy to the device failed: ") +
                      e.what_without_backtrace());
    }
    return b;
  }

  void Release(size_t b) {
    {
      std::lock_guard lock(mu);
      free_blocks.push_back(b);
    }
    freed.notify_one();
  }

  void SynchronizeStream() {
    if (!async) return;
    c10::Event all(device.type());
    all.record(*stream);
    all.synchronize();
  }
};

DeviceStaging::DeviceStaging(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DeviceStaging::~DeviceStaging() {
  try {
    impl_->SynchronizeStream();
  } catch (const c10::Error&) {
    // The device failed; nothing to wait for.
  }
}

StatusOr<std::unique_ptr<DeviceStaging>> DeviceStaging::Create(
    const DeviceSpec& device, const std::vector<size_t>& tensor_bytes) {
  auto impl = std::make_unique<Impl>();
  impl->device = ToC10Device(device);
  impl->async = device.kind != DeviceKind::kCpu;
  size_t total = 0;
  for (size_t n : tensor_bytes) total += n;
  try {
    c10::DeviceGuard on_device(impl->device);
    std::optional<c10::StreamGuard> on_stream;
    if (impl->async) {
      c10::impl::VirtualGuardImpl guard_impl(impl->device.type());
      impl->stream = guard_impl.getStreamFromGlobalPool(impl->device);
      // The buffers belong to the stream that writes them (the caching
      // allocator reuses memory per stream).
      on_stream.emplace(*impl->stream);
    }
    const auto bytes = at::TensorOptions().dtype(at::kByte);
    for (size_t n : tensor_bytes) {
      impl->tensors.push_back(at::empty({static_cast<int64_t>(n)}, bytes.device(impl->device)));
    }
    for (size_t b = 0; b < kBlocks; ++b) {
      impl->blocks.push_back(
          {at::empty({static_cast<int64_t>(kBlockBytes)}, bytes.pinned_memory(impl->async)),
           std::nullopt});
      impl->free_blocks.push_back(b);
    }
  } catch (const c10::OutOfMemoryError& e) {
    return ResourceExhausted("cannot allocate " + std::to_string(total) + " bytes on " +
                             device.ToString() + " to stage weights: " +
                             e.what_without_backtrace());
  } catch (const c10::Error& e) {
    // E.g. a device type without a pinned host allocator.
    return Unimplemented("cannot stage weights through pinned memory on " + device.ToString() +
                         ": " + e.what_without_backtrace());
  }
  return std::unique_ptr<DeviceStaging>(new DeviceStaging(std::move(impl)));
}

Status DeviceStaging::Copy(size_t tensor, size_t offset, const std::byte* src, size_t size) {
  Impl& s = *impl_;
  at::Tensor& dest = s.tensors.at(tensor);
  for (size_t done = 0; done < size;) {
    const size_t n = std::min(kBlockBytes, size - done);
    PT2_ASSIGN_OR_RETURN(size_t b, s.Acquire());
    Impl::Block& block = s.blocks[b];
    std::memcpy(block.host.data_ptr(), src + done, n);
    try {
      c10::DeviceGuard on_device(s.device);
      std::optional<c10::StreamGuard> on_stream;
      if (s.async) on_stream.emplace(*s.stream);
      const auto at = static_cast<int64_t>(offset + done);
      dest.narrow(0, at, static_cast<int64_t>(n))
          .copy_(block.host.narrow(0, 0, static_cast<int64_t>(n)), /*non_blocking=*/s.async);
      if (s.async) {
        if (!block.done) block.done.emplace(s.device.type());
        block.done->record(*s.stream);
      }
    } catch (const c10::Error& e) {
      s.Release(b);
      return Internal(std::string("staging copy to the device failed: ") +
                      e.what_without_backtrace());
    }
    s.Release(b);
    done += n;
  }
  return Status::Ok();
}

Status DeviceStaging::Finish() {
  try {
    impl_->SynchronizeStream();
  } catch (const c10::Error& e) {
    return Internal(std::string("staging copy to the device failed: ") +
                    e.what_without_backtrace());
  }
  impl_->blocks.clear();  // the ring is not needed any more
  return Status::Ok();
}

std::shared_ptr<const void> DeviceStaging::TakeTensor(size_t i, const std::byte** data) {
  auto owner = std::make_shared<at::Tensor>(std::move(impl_->tensors.at(i)));
  *data = static_cast<const std::byte*>(owner->const_data_ptr());
  return owner;
}

}  // namespace pt2serve
