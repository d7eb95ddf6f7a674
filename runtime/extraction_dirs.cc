#include "runtime/extraction_dirs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <system_error>

namespace pt2serve {
namespace {

namespace fs = std::filesystem;

// Field 22 of /proc/<pid>/stat (clock ticks after boot): with the PID it
// names one process, even after the PID is reused. "" when there is no such
// process.
std::string StartTime(const std::string& pid) {
  std::ifstream in("/proc/" + pid + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return "";
  // The command name (field 2) may hold spaces and parentheses: skip past
  // its last ')'; field 3 follows.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return "";
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) return field;
  }
  return "";
}

std::string PidNamespace() {
  std::error_code ec;
  const fs::path target = fs::read_symlink("/proc/self/ns/pid", ec);
  return ec ? std::string() : target.string();
}

// What a marker file says of its owner, as one line of "key=value" words.
std::string OwnerLine() {
  const std::string pid = std::to_string(::getpid());
  return "pid=" + pid + " start=" + StartTime(pid) + " pidns=" + PidNamespace() + "\n";
}

std::string Value(const std::string& line, std::string_view key) {
  std::istringstream words(line);
  std::string word;
  while (words >> word) {
    if (word.size() > key.size() && word.compare(0, key.size(), key) == 0 &&
        word[key.size()] == '=') {
      return word.substr(key.size() + 1);
    }
  }
  return "";
}

}  // namespace

size_t ClaimExtractionDirs(const std::string& root) {
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
  size_t claimed = 0;
  const std::string owner = OwnerLine();
  for (const std::string& dir : dirs) {
    const std::string marker = dir + "/" + kExtractionOwnerFile;
    // O_EXCL: a directory is claimed once, by the first process that maps it.
    const int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) continue;
    const bool written = ::write(fd, owner.data(), owner.size()) ==
                         static_cast<ssize_t>(owner.size());
    ::close(fd);
    if (written) ++claimed;
  }
  return claimed;
}

size_t RemoveStaleExtractionDirs(const std::string& root) {
  const std::string our_namespace = PidNamespace();
  size_t removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    // Only real directories of our own user holding a marker of our own user:
    // /tmp is world-writable, and nobody else may steer what we delete.
    const fs::path marker_path = it->path() / kExtractionOwnerFile;
    struct stat dir_st {}, marker_st {};
    if (::lstat(it->path().c_str(), &dir_st) != 0 || !S_ISDIR(dir_st.st_mode) ||
        dir_st.st_uid != ::geteuid() || ::lstat(marker_path.c_str(), &marker_st) != 0 ||
        !S_ISREG(marker_st.st_mode) || marker_st.st_uid != ::geteuid()) {
      continue;
    }
    std::ifstream marker(marker_path);
    std::string line;
    if (!std::getline(marker, line)) continue;  // not ours, or still being claimed
    const std::string pid = Value(line, "pid");
    const std::string start = Value(line, "start");
    if (pid.empty() || start.empty() || Value(line, "pidns") != our_namespace) continue;
    if (StartTime(pid) == start) continue;  // its owner is alive
    marker.close();
    std::error_code remove_ec;
    if (fs::remove_all(it->path(), remove_ec) > 0 && !remove_ec) ++removed;
  }
  return removed;
}

}  // namespace pt2serve
