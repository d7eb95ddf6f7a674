#include "runtime/extraction_dirs.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <system_error>
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

}  // namespace pt2serve
