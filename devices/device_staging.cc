#include "devices/device_staging.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>

#include "devices/tensor_convert.h"

namespace pt2serve {

struct DeviceStaging::Impl {
  struct Block {
    at::Tensor host;  // block_bytes; pinned when async
    // Recorded around the block's last copy; `timed` until its duration was
    // added to stats.busy. Only the thread that holds the block (or Finish)
    // touches them.
    std::optional<c10::Event> start;
    std::optional<c10::Event> done;
    bool timed = false;
  };

  c10::Device device{c10::kCPU};
  bool async = false;                 // an accelerator: copies on `stream`
  std::optional<c10::Stream> stream;  // set when async
  size_t block_bytes = kBlockBytes;
  std::vector<at::Tensor> tensors;    // 1-D kByte buffers on `device`
  std::vector<Block> blocks;

  // Held while a block's copy and its timing events are queued (async), so
  // that copies from several threads do not interleave between another
  // copy's events: each event pair then times exactly its own copy.
  std::mutex queue_mu;

  std::mutex mu;
  std::condition_variable freed;
  std::vector<size_t> free_blocks;  // guarded by mu
  CopyStats stats;                  // guarded by mu
  bool can_time = true;             // the backend measures events; guarded by mu

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
      AddBusyTime(blocks[b]);
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

  // Adds the duration of `block`'s last copy, which has completed, to
  // stats.busy. REQUIRES: the caller holds the block.
  void AddBusyTime(Block& block) {
    if (!block.timed) return;
    block.timed = false;
    std::lock_guard lock(mu);
    if (!can_time) return;
    try {
      const double ms = block.start->elapsedTime(*block.done);
      stats.busy += std::chrono::nanoseconds(static_cast<int64_t>(ms * 1e6));
    } catch (const c10::Error&) {
      can_time = false;  // a backend without event timing: busy stays unknown
      stats.busy = std::chrono::nanoseconds(0);
    }
  }

  void SynchronizeStream() {
    if (!async) return;
    c10::Event all(device.type());
    all.record(*stream);
    all.synchronize();
  }
};

size_t DeviceStaging::RingBytes(size_t set_bytes) {
  if (set_bytes < kBlockBytes) return std::max<size_t>(set_bytes, 1);
  return std::min(kBlocks, (set_bytes + kBlockBytes - 1) / kBlockBytes) * kBlockBytes;
}

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
    const size_t ring = RingBytes(total);
    impl->block_bytes = std::min(kBlockBytes, ring);
    for (size_t b = 0; b < ring / impl->block_bytes; ++b) {
      Impl::Block& block = impl->blocks.emplace_back();
      block.host = at::empty({static_cast<int64_t>(impl->block_bytes)},
                             bytes.pinned_memory(impl->async));
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
    const size_t n = std::min(s.block_bytes, size - done);
    PT2_ASSIGN_OR_RETURN(size_t b, s.Acquire());
    Impl::Block& block = s.blocks[b];
    std::memcpy(block.host.data_ptr(), src + done, n);
    try {
      c10::DeviceGuard on_device(s.device);
      std::optional<c10::StreamGuard> on_stream;
      std::unique_lock queued(s.queue_mu, std::defer_lock);
      if (s.async) {
        queued.lock();
        on_stream.emplace(*s.stream);
        if (!block.done) {
          // Timing events (BACKEND_DEFAULT), so that Stats() can say how
          // fast the copies ran.
          block.start.emplace(s.device.type(), c10::EventFlag::BACKEND_DEFAULT);
          block.done.emplace(s.device.type(), c10::EventFlag::BACKEND_DEFAULT);
        }
        block.start->record(*s.stream);
      }
      const auto copy_start = std::chrono::steady_clock::now();
      const auto at = static_cast<int64_t>(offset + done);
      dest.narrow(0, at, static_cast<int64_t>(n))
          .copy_(block.host.narrow(0, 0, static_cast<int64_t>(n)), /*non_blocking=*/s.async);
      if (s.async) {
        block.done->record(*s.stream);
        block.timed = true;
      }
      const auto copy_time = std::chrono::steady_clock::now() - copy_start;
      if (queued.owns_lock()) queued.unlock();
      std::lock_guard lock(s.mu);
      s.stats.bytes += n;
      ++s.stats.copies;
      if (!s.async) s.stats.busy += copy_time;  // a synchronous copy is done already
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
    for (Impl::Block& block : impl_->blocks) impl_->AddBusyTime(block);
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

DeviceStaging::CopyStats DeviceStaging::Stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

}  // namespace pt2serve
