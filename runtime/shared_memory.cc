#include "runtime/shared_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace pt2serve {
namespace {

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

size_t RoundToPage(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return std::max(page, (size + page - 1) / page * page);
}

}  // namespace

StatusOr<SharedMemory> SharedMemory::Create(size_t size, const std::string& name) {
  const size_t bytes = RoundToPage(size);
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) return ResourceExhausted(Errno("memfd_create"));
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    std::string error = Errno("sizing shared memory");
    close(fd);
    return ResourceExhausted(error + " (" + std::to_string(bytes) + " bytes)");
  }
  return Map(fd, bytes, /*writable=*/true);
}

StatusOr<SharedMemory> SharedMemory::Map(int fd, size_t size, bool writable) {
  struct stat st {};
  if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < size || size == 0) {
    close(fd);
    return Internal("shared memory file is smaller than the " + std::to_string(size) +
                    " bytes announced");
  }
  const int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = mmap(nullptr, size, prot, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    std::string error = Errno("mapping shared memory");
    close(fd);
    return ResourceExhausted(error);
  }
  SharedMemory m;
  m.fd_ = fd;
  m.data_ = static_cast<std::byte*>(p);
  m.size_ = size;
  return m;
}

SharedMemory::~SharedMemory() { Reset(); }

SharedMemory::SharedMemory(SharedMemory&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

SharedMemory& SharedMemory::operator=(SharedMemory&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void SharedMemory::Reset() {
  if (data_) munmap(data_, size_);
  if (fd_ >= 0) close(fd_);
  data_ = nullptr;
  fd_ = -1;
  size_ = 0;
}

}  // namespace pt2serve
