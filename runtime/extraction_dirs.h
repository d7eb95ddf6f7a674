// Clean-up of AOTInductor's package extraction directories.
//
// Loading a .pt2 extracts its shared library and kernels into a fresh
// directory under /tmp (hard-coded by AOTInductor, e.g.
// /tmp/aotinductor_XXXXXX, 2-200 MB each), which the loader removes when it
// is destroyed. A process that dies first (a crashed or killed
// pt2serve-worker, a daemon killed by the OOM killer) leaves it behind: a
// crash-looping isolated model left one per restart, on a /tmp that is often
// RAM (tmpfs) or a pod's emptyDir, which outlives container restarts.
//
// So a process that loads a package claims the directory it extracted
// (ExtractionClaim): an owner file in it, held locked (flock) for as long as
// the claim lives. The kernel drops the lock when the process dies, however
// it dies, which is what RemoveStaleExtractionDirs tests: it deletes the
// claimed directories whose owner file it can lock. That works across PID
// namespaces and container restarts, where a PID proves nothing. The daemon
// sweeps at start-up and each time it reaps a worker process. Directories
// without an owner file (another program's, or a load still claiming it),
// those of other users, and symlinks are never touched.
//
// Thread-safety: every function may be called from any thread; concurrent
// sweeps at worst both try to delete a directory (errors are ignored).
// Claiming is meant to run right after each package load, under the
// process's loader mutex, so that it claims exactly that load's directory.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace pt2serve {

// The root AOTInductor extracts into.
inline constexpr const char* kExtractionRoot = "/tmp";
// The owner file's name inside an extraction directory ("pid=N" for people).
inline constexpr const char* kExtractionOwnerFile = ".pt2serve-owner";

// Holds the owner-file locks of the directories it claimed; releasing them
// (destruction) lets a sweep delete what is left. Move-only.
class ExtractionClaim {
 public:
  ExtractionClaim() = default;
  ~ExtractionClaim();
  ExtractionClaim(ExtractionClaim&& other) noexcept;
  ExtractionClaim& operator=(ExtractionClaim&& other) noexcept;
  ExtractionClaim(const ExtractionClaim&) = delete;
  ExtractionClaim& operator=(const ExtractionClaim&) = delete;

  // Claims the extraction directories of packages this process has loaded
  // (found through the libraries it maps from `root`) that nobody claimed
  // yet. Best-effort: never throws; a directory it cannot claim is skipped.
  static ExtractionClaim ClaimNew(const std::string& root = kExtractionRoot);

  size_t size() const { return locked_fds_.size(); }

 private:
  void Release();
  std::vector<int> locked_fds_;  // open, flock'ed owner files (O_CLOEXEC)
};

// Deletes the claimed directories directly under `root` whose claim is gone
// (their owner file is not locked). Returns how many were deleted.
// Best-effort: never throws.
size_t RemoveStaleExtractionDirs(const std::string& root = kExtractionRoot);

}  // namespace pt2serve
