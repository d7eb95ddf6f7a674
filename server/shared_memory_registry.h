// System shared memory for KServe tensors (Triton's system shared-memory
// extension; docs/shared-memory.md): clients register POSIX shared-memory
// objects (shm_open keys) under region names, then point request inputs and
// requested outputs at byte ranges of those regions instead of sending the
// bytes in the message.
//
// Trust: whoever can call Register can make the daemon read and write any
// shared-memory object the daemon's user may open read-write. The extension
// is off unless the config enables it.
//
// Lifetime: a region is mapped (read-write, MAP_SHARED) once, at Register;
// every request that uses it holds a shared_ptr to the mapping, so Unregister
// while requests are in flight only forgets the name, and the mapping goes
// when the last request ends.
//
// Truncation: a client that shrinks the object after Register makes accesses
// beyond the new end fault with SIGBUS. Span() checks the object's size
// (fstat) before each use; for a shrink during a request, the daemon's SIGBUS
// handler replaces the faulting region's mapping with zero pages (the access
// then succeeds) and marks the region lost: requests that used it fail
// (Lost()), later uses fail, and the client must register it again. A SIGBUS
// outside any region goes to the previous handler (by default: the process
// dies as it would without this guard).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pt2serve::server {

struct GuardSlot;  // shared_memory_registry.cc: the SIGBUS handler's view of one mapping

// One mapped region. Immutable after Map(); destroying it unmaps it.
// Thread-safety: all methods may be called concurrently.
class SharedMemoryRegion {
 public:
  // Opens shm object `key` read-write and maps [offset, offset + byte_size).
  // INVALID_ARGUMENT for a malformed key, a zero size or a range outside the
  // object; NOT_FOUND for a key with no object; PERMISSION_DENIED when the
  // daemon may not open it read-write; RESOURCE_EXHAUSTED when too many
  // mappings are alive.
  static StatusOr<std::shared_ptr<SharedMemoryRegion>> Map(const std::string& name,
                                                           const std::string& key,
                                                           uint64_t offset, uint64_t byte_size);
  ~SharedMemoryRegion();
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;

  const std::string& name() const { return name_; }
  const std::string& key() const { return key_; }
  uint64_t offset() const { return offset_; }
  uint64_t byte_size() const { return byte_size_; }
  // The region's first byte (offset() bytes into the object).
  std::byte* data() const { return data_; }
  // True once an access found the object shrunk (see the file comment):
  // since then the mapping is private zero pages, not the client's memory.
  bool Lost() const;
  // OK while the object still holds the whole region and it is not Lost();
  // else INVALID_ARGUMENT saying what happened.
  Status CheckIntact() const;

 private:
  SharedMemoryRegion() = default;

  std::string name_, key_;
  uint64_t offset_ = 0, byte_size_ = 0;
  int fd_ = -1;  // kept open for CheckIntact's fstat
  void* map_base_ = nullptr;
  size_t map_len_ = 0;
  std::byte* data_ = nullptr;
  GuardSlot* slot_ = nullptr;
};

// Bytes of a region used by one tensor; holds the mapping alive.
struct SharedMemorySpan {
  std::shared_ptr<SharedMemoryRegion> region;
  std::byte* data = nullptr;
  size_t size = 0;
  uint64_t offset = 0;  // within the region
};

// What Status lists for one region.
struct SharedMemoryRegionInfo {
  std::string name, key;
  uint64_t offset = 0, byte_size = 0;
};

// Region name -> mapping. Thread-safety: all methods may be called
// concurrently; a mutex guards the map (never held during I/O on tensors).
class SharedMemoryRegistry {
 public:
  // Installs the SIGBUS guard unless it is already the process's handler.
  explicit SharedMemoryRegistry(size_t max_regions);

  // ALREADY_EXISTS if `name` is registered; INVALID_ARGUMENT for an empty or
  // too long name; RESOURCE_EXHAUSTED past max_regions; else as Map().
  Status Register(const std::string& name, const std::string& key, uint64_t offset,
                  uint64_t byte_size);
  // Forgets `name` ("" = every region); an unknown name is not an error.
  // Returns how many regions it forgot.
  size_t Unregister(const std::string& name);
  // The region `name` ("" = all, by name); NOT_FOUND for an unknown name.
  StatusOr<std::vector<SharedMemoryRegionInfo>> List(const std::string& name) const;
  // [offset, offset + byte_size) of region `name` for `what` (e.g. "input
  // 'x'", used in messages). INVALID_ARGUMENT for an unknown region, a range
  // outside it, or a region that is no longer intact.
  StatusOr<SharedMemorySpan> Span(std::string_view what, const std::string& name,
                                  uint64_t offset, uint64_t byte_size) const;
  size_t size() const;

 private:
  const size_t max_regions_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<SharedMemoryRegion>, std::less<>> regions_;
};

}  // namespace pt2serve::server
