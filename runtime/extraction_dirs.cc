#include "runtime/extraction_dirs.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

namespace pt2serve {
namespace {

namespace fs = std::filesystem;

// The owner file of `dir` only if it is a regular file of our user in a real
// directory of our user: /tmp is world-writable, and nobody else may steer
// what we delete.
bool OwnedByUs(const fs::path& dir, const fs::path& owner_file) {
  struct stat dir_st {}, file_st {};
  return ::lstat(dir.c_str(), &dir_st) == 0 && S_ISDIR(dir_st.st_mode) &&
         dir_st.st_uid == ::geteuid() && ::lstat(owner_file.c_str(), &file_st) == 0 &&
         S_ISREG(file_st.st_mode) && file_st.st_uid == ::geteuid();
}

// Whether `dir` is laid out as AOTInductor extracts a package:
// <dir>/<package>/data/aotinductor/...
bool LooksLikeExtraction(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code st_ec;
    if (fs::is_directory(fs::symlink_status(it->path() / "data" / "aotinductor", st_ec))) {
      return true;
    }
  }
  return false;
}

// The subset of `dirs` that some process we can inspect maps a file from or
// holds a file open in (/proc/<pid>/maps and /proc/<pid>/fd).
std::set<std::string> InUse(const std::set<std::string>& dirs) {
  std::set<std::string> used;
  auto note = [&](const std::string& path) {
    for (const std::string& dir : dirs) {
      if (path.starts_with(dir + "/")) used.insert(dir);
    }
  };
  std::error_code ec;
  for (fs::directory_iterator proc("/proc", ec), end; !ec && proc != end; proc.increment(ec)) {
    const std::string pid = proc->path().filename().string();
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream maps(proc->path() / "maps");
    for (std::string line; std::getline(maps, line);) {
      const size_t slash = line.find('/');
      if (slash != std::string::npos) note(line.substr(slash));
    }
    std::error_code fd_ec;
    for (fs::directory_iterator fd(proc->path() / "fd", fd_ec); !fd_ec && fd != end;
         fd.increment(fd_ec)) {
      std::error_code link_ec;
      const fs::path target = fs::read_symlink(fd->path(), link_ec);
      if (!link_ec) note(target.string());
    }
  }
  return used;
}

std::set<std::string> EntryNames(const std::string& root) {
  std::set<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    names.insert(it->path().filename().string());
  }
  return names;
}

}  // namespace

ExtractionClaim::~ExtractionClaim() { Release(); }

ExtractionClaim::ExtractionClaim(ExtractionClaim&& other) noexcept
    : locked_fds_(std::exchange(other.locked_fds_, {})) {}

ExtractionClaim& ExtractionClaim::operator=(ExtractionClaim&& other) noexcept {
  if (this != &other) {
    Release();
    locked_fds_ = std::exchange(other.locked_fds_, {});
  }
  return *this;
}

void ExtractionClaim::Release() {
  for (int fd : locked_fds_) ::close(fd);  // closing drops the lock
  locked_fds_.clear();
}

ExtractionClaim ExtractionClaim::ClaimNew(const std::string& root) {
  // A package's wrapper library is mapped from <root>/<dir>/.../data/aotinductor/...
  const std::string prefix = root + "/";
  std::set<std::string> dirs;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t at = line.find(prefix);
    if (at == std::string::npos || line.find("/data/aotinductor/", at) == std::string::npos) {
      continue;
    }
    const size_t end = line.find('/', at + prefix.size());
    if (end != std::string::npos) dirs.insert(line.substr(at, end - at));
  }
  ExtractionClaim claim;
  const std::string pid = std::to_string(::getpid());
  for (const std::string& dir : dirs) {
    // Locked before it appears under its real name (link() fails when the
    // name exists: one claim per directory), so a sweep never sees it
    // unlocked.
    const std::string owner = dir + "/" + kExtractionOwnerFile;
    const std::string pending = owner + "." + pid;
    const int fd = ::open(pending.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) continue;
    const std::string text = "pid=" + pid + "\n";
    const bool ok = ::flock(fd, LOCK_EX | LOCK_NB) == 0 &&
                    ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                    ::link(pending.c_str(), owner.c_str()) == 0;
    ::unlink(pending.c_str());
    if (ok) {
      claim.locked_fds_.push_back(fd);
    } else {
      ::close(fd);  // claimed already (by us or another process), or not writable
    }
  }
  return claim;
}

size_t RemoveStaleExtractionDirs(const std::string& root) {
  size_t removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path owner = it->path() / kExtractionOwnerFile;
    if (!OwnedByUs(it->path(), owner)) continue;
    const int fd = ::open(owner.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) continue;
    // Locked: its owner is alive. Unlocked: the owner released it or died.
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      std::error_code remove_ec;
      if (fs::remove_all(it->path(), remove_ec) > 0 && !remove_ec) ++removed;
    }
    ::close(fd);
  }
  return removed;
}

ExtractionLoadGuard::ExtractionLoadGuard(std::string root) : root_(std::move(root)) {
  // Per user, and only if it is ours: /tmp is world-writable, and another
  // user's file could be held locked by them forever.
  const std::string lock_path =
      root_ + "/.pt2serve-extract-" + std::to_string(::geteuid()) + ".lock";
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  struct stat st {};
  if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid()) {
    int rc;
    while ((rc = ::flock(fd, LOCK_SH)) != 0 && errno == EINTR) {
    }
    if (rc == 0) lock_fd_ = fd;
  }
  if (lock_fd_ < 0 && fd >= 0) ::close(fd);
  before_ = EntryNames(root_);
}

ExtractionLoadGuard::~ExtractionLoadGuard() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // drops the lock
}

size_t ExtractionLoadGuard::RemoveLeftovers(std::chrono::milliseconds wait) {
  if (lock_fd_ < 0) return 0;
  // Converting SHARED to EXCLUSIVE drops the shared lock first (flock(2)),
  // so a failed attempt leaves none held; nobody waits on us meanwhile.
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) return 0;
    if (std::chrono::steady_clock::now() >= deadline) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::set<std::string> candidates;
  for (const std::string& name : EntryNames(root_)) {
    if (before_.contains(name)) continue;
    const fs::path dir = fs::path(root_) / name;
    struct stat st {};
    std::error_code ec;
    if (::lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid() &&
        !fs::exists(fs::symlink_status(dir / kExtractionOwnerFile, ec)) &&
        LooksLikeExtraction(dir)) {
      candidates.insert(dir.string());
    }
  }
  size_t removed = 0;
  if (!candidates.empty()) {
    const std::set<std::string> used = InUse(candidates);
    for (const std::string& dir : candidates) {
      std::error_code ec;
      if (!used.contains(dir) && fs::remove_all(dir, ec) > 0 && !ec) ++removed;
    }
  }
  ::flock(lock_fd_, LOCK_UN);
  return removed;
}

}  // namespace pt2serve
