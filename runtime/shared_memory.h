// SharedMemory: an anonymous memory file (memfd) mapped into this process,
// whose descriptor can be passed to another process (WorkerChannel) to map
// the same pages there. Used for tensors that cross the daemon/worker
// boundary without a socket copy.
//
// Ownership: owns the descriptor and the mapping; move-only. The memory
// lives as long as any process keeps the descriptor or a mapping.
// Thread-safety: none; the owner serializes access to the bytes.
#pragma once

#include <cstddef>
#include <string>

#include "common/status.h"

namespace pt2serve {

class SharedMemory {
 public:
  SharedMemory() = default;
  // A new zero-filled memory file of `size` bytes (at least one page),
  // mapped read-write. `name` shows up in /proc/PID/maps.
  static StatusOr<SharedMemory> Create(size_t size, const std::string& name);
  // Maps a descriptor received from another process; takes ownership of
  // `fd` (closed on failure too). Checks that the file holds `size` bytes.
  static StatusOr<SharedMemory> Map(int fd, size_t size, bool writable);
  ~SharedMemory();
  SharedMemory(SharedMemory&& other) noexcept;
  SharedMemory& operator=(SharedMemory&& other) noexcept;
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  int fd() const { return fd_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  void Reset();
  int fd_ = -1;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace pt2serve
