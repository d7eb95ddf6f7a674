#include "server/shared_memory_registry.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "common/limits.h"

namespace pt2serve::server {

// The SIGBUS handler's view of one live mapping: [begin, end) of the mapping
// and whether the handler replaced it. begin == 0: free; 1: being claimed.
// Written by the mapping's owner (claim / release) and the handler; read with
// atomics only, so the handler takes no lock.
struct GuardSlot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<bool> lost{false};
};

namespace {

GuardSlot g_slots[kMaxSharedMemoryMappings];
struct sigaction g_previous_sigbus;

// Async-signal context: only atomics, mmap and the previous disposition.
void OnSigbus(int sig, siginfo_t* info, void* context) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (GuardSlot& slot : g_slots) {
    const uintptr_t begin = slot.begin.load(std::memory_order_acquire);
    if (begin <= 1) continue;
    const uintptr_t end = slot.end.load(std::memory_order_acquire);
    if (addr < begin || addr >= end) continue;
    // The faulting thread holds a reference to this mapping (it is reading or
    // writing it), so the range is still ours: swap in zero pages and let the
    // access run again.
    void* replaced = mmap(reinterpret_cast<void*>(begin), end - begin, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (replaced != MAP_FAILED) {
      slot.lost.store(true, std::memory_order_release);
      return;
    }
    break;
  }
  // Not a region's fault: what would have happened without the guard.
  if ((g_previous_sigbus.sa_flags & SA_SIGINFO) && g_previous_sigbus.sa_sigaction) {
    g_previous_sigbus.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous_sigbus.sa_handler != SIG_DFL && g_previous_sigbus.sa_handler != SIG_IGN) {
    g_previous_sigbus.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);
  raise(sig);  // delivered on return (a fault also repeats): terminates
}

// Installs OnSigbus unless it is the current handler (something may have
// replaced it since: it is then chained to, as g_previous_sigbus).
void InstallSigbusGuard() {
  static std::mutex mu;
  std::lock_guard lock(mu);
  struct sigaction current {};
  sigaction(SIGBUS, nullptr, &current);
  if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == OnSigbus) return;
  struct sigaction action {};
  action.sa_sigaction = OnSigbus;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  sigaction(SIGBUS, &action, &g_previous_sigbus);
}

GuardSlot* ClaimSlot(void* base, size_t len) {
  for (GuardSlot& slot : g_slots) {
    uintptr_t expected = 0;
    if (slot.begin.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
      slot.lost.store(false, std::memory_order_relaxed);
      slot.end.store(reinterpret_cast<uintptr_t>(base) + len, std::memory_order_release);
      slot.begin.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
      return &slot;
    }
  }
  return nullptr;
}

std::string ErrnoText(int err) { return std::strerror(err); }

// shm_open names one object in /dev/shm: leading slashes are dropped, and
// what is left must be a plain file name.
Status CheckKey(const std::string& key) {
  if (key.empty()) return InvalidArgument("shared memory key must not be empty");
  PT2_RETURN_IF_ERROR(CheckLength("shared memory key", key, kMaxSharedMemoryKeyBytes));
  const size_t start = key.find_first_not_of('/');
  const std::string_view rest =
      start == std::string::npos ? std::string_view() : std::string_view(key).substr(start);
  if (rest.empty() || rest == "." || rest == ".." || rest.find('/') != std::string_view::npos ||
      rest.find('\0') != std::string_view::npos) {
    return InvalidArgument("shared memory key '" + Printable(key) +
                           "' is not a shm_open name (\"/name\" without further slashes)");
  }
  return Status::Ok();
}

std::string RegionText(const std::string& name) {
  return "shared memory region '" + Printable(name) + "'";
}

}  // namespace

StatusOr<std::shared_ptr<SharedMemoryRegion>> SharedMemoryRegion::Map(const std::string& name,
                                                                       const std::string& key,
                                                                       uint64_t offset,
                                                                       uint64_t byte_size) {
  PT2_RETURN_IF_ERROR(CheckKey(key));
  const std::string what = RegionText(name) + " (key '" + Printable(key) + "')";
  if (byte_size == 0) return InvalidArgument(what + ": byte_size must be > 0");
  // The region object first, so every early return below cleans up.
  std::shared_ptr<SharedMemoryRegion> region(new SharedMemoryRegion());
  region->name_ = name;
  region->key_ = key;
  region->offset_ = offset;
  region->byte_size_ = byte_size;
  region->fd_ = shm_open(key.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (region->fd_ < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFound(what + ": no such shared memory object");
    if (err == EACCES) {
      return PermissionDenied(what + ": the server may not open it read-write");
    }
    return InvalidArgument(what + ": cannot open it: " + ErrnoText(err));
  }
  struct stat st {};
  if (fstat(region->fd_, &st) != 0) return Internal(what + ": fstat: " + ErrnoText(errno));
  if (!S_ISREG(st.st_mode)) return InvalidArgument(what + ": not a shared memory object");
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (offset > file_size || byte_size > file_size - offset) {
    return InvalidArgument(what + ": offset " + std::to_string(offset) + " + byte_size " +
                           std::to_string(byte_size) + " exceeds the object's " +
                           std::to_string(file_size) + " bytes");
  }
  const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t map_offset = offset - offset % page;
  region->map_len_ = static_cast<size_t>(offset - map_offset + byte_size);
  void* base = mmap(nullptr, region->map_len_, PROT_READ | PROT_WRITE, MAP_SHARED, region->fd_,
                    static_cast<off_t>(map_offset));
  if (base == MAP_FAILED) {
    region->map_len_ = 0;
    return InvalidArgument(what + ": mmap failed: " + ErrnoText(errno));
  }
  region->map_base_ = base;
  region->data_ = static_cast<std::byte*>(base) + (offset - map_offset);
  region->slot_ = ClaimSlot(base, region->map_len_);
  if (!region->slot_) {
    return ResourceExhausted(what + ": " + std::to_string(kMaxSharedMemoryMappings) +
                             " shared memory mappings are alive (unregistered regions stay "
                             "mapped while requests use them)");
  }
  return region;
}

SharedMemoryRegion::~SharedMemoryRegion() {
  if (slot_) {  // out of the handler's table before the range can be reused
    slot_->begin.store(1, std::memory_order_release);
    slot_->end.store(0, std::memory_order_release);
  }
  if (map_base_) munmap(map_base_, map_len_);
  if (slot_) slot_->begin.store(0, std::memory_order_release);
  if (fd_ >= 0) close(fd_);
}

bool SharedMemoryRegion::Lost() const {
  return slot_ && slot_->lost.load(std::memory_order_acquire);
}

Status SharedMemoryRegion::CheckIntact() const {
  if (Lost()) {
    return InvalidArgument(RegionText(name_) +
                           " lost its memory: the shared memory object was truncated while in "
                           "use; unregister and register it again");
  }
  struct stat st {};
  if (fstat(fd_, &st) != 0) {
    return InvalidArgument(RegionText(name_) + ": fstat failed: " + ErrnoText(errno));
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (offset_ > file_size || byte_size_ > file_size - offset_) {
    return InvalidArgument(RegionText(name_) + " was shrunk: the object '" + Printable(key_) +
                           "' has " + std::to_string(file_size) +
                           " bytes, the region needs offset " + std::to_string(offset_) +
                           " + " + std::to_string(byte_size_));
  }
  return Status::Ok();
}

SharedMemoryRegistry::SharedMemoryRegistry(size_t max_regions) : max_regions_(max_regions) {
  InstallSigbusGuard();
}

Status SharedMemoryRegistry::Register(const std::string& name, const std::string& key,
                                      uint64_t offset, uint64_t byte_size) {
  if (name.empty()) return InvalidArgument("shared memory region name must not be empty");
  PT2_RETURN_IF_ERROR(
      CheckLength("shared memory region name", name, kMaxSharedMemoryNameBytes));
  {
    std::lock_guard lock(mu_);
    if (regions_.count(name)) {
      return AlreadyExists(RegionText(name) + " is already registered");
    }
    if (regions_.size() >= max_regions_) {
      return ResourceExhausted("at most " + std::to_string(max_regions_) +
                               " shared memory regions may be registered");
    }
  }
  // Mapped outside the lock (a syscall per step); the insert re-checks.
  PT2_ASSIGN_OR_RETURN(auto region, SharedMemoryRegion::Map(name, key, offset, byte_size));
  std::lock_guard lock(mu_);
  if (regions_.size() >= max_regions_) {
    return ResourceExhausted("at most " + std::to_string(max_regions_) +
                             " shared memory regions may be registered");
  }
  if (!regions_.emplace(name, std::move(region)).second) {
    return AlreadyExists(RegionText(name) + " is already registered");
  }
  return Status::Ok();
}

size_t SharedMemoryRegistry::Unregister(const std::string& name) {
  std::map<std::string, std::shared_ptr<SharedMemoryRegion>, std::less<>> dropped;
  {
    std::lock_guard lock(mu_);
    if (name.empty()) {
      dropped.swap(regions_);
    } else if (auto it = regions_.find(name); it != regions_.end()) {
      dropped.emplace(it->first, std::move(it->second));
      regions_.erase(it);
    }
  }
  // Unmapped here (or by the last request using them), outside the lock.
  return dropped.size();
}

StatusOr<std::vector<SharedMemoryRegionInfo>> SharedMemoryRegistry::List(
    const std::string& name) const {
  std::vector<SharedMemoryRegionInfo> out;
  std::lock_guard lock(mu_);
  for (const auto& [n, region] : regions_) {
    if (!name.empty() && n != name) continue;
    out.push_back({n, region->key(), region->offset(), region->byte_size()});
  }
  if (!name.empty() && out.empty()) {
    return NotFound(RegionText(name) + " is not registered");
  }
  return out;
}

StatusOr<SharedMemorySpan> SharedMemoryRegistry::Span(std::string_view what,
                                                      const std::string& name, uint64_t offset,
                                                      uint64_t byte_size) const {
  std::shared_ptr<SharedMemoryRegion> region;
  {
    std::lock_guard lock(mu_);
    auto it = regions_.find(name);
    if (it == regions_.end()) {
      return InvalidArgument(std::string(what) + ": " + RegionText(name) + " is not registered");
    }
    region = it->second;
  }
  if (offset > region->byte_size() || byte_size > region->byte_size() - offset) {
    return InvalidArgument(std::string(what) + ": offset " + std::to_string(offset) +
                           " + byte_size " + std::to_string(byte_size) + " exceeds " +
                           RegionText(name) + "'s " + std::to_string(region->byte_size()) +
                           " bytes");
  }
  if (Status intact = region->CheckIntact(); !intact.ok()) {
    return intact.WithPrefix(std::string(what));
  }
  SharedMemorySpan span;
  span.data = region->data() + offset;
  span.size = static_cast<size_t>(byte_size);
  span.offset = offset;
  span.region = std::move(region);
  return span;
}

size_t SharedMemoryRegistry::size() const {
  std::lock_guard lock(mu_);
  return regions_.size();
}

}  // namespace pt2serve::server
