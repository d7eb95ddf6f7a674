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
// A load that FAILS after extracting (the loader's constructor throws, e.g.
// at the dlopen of a corrupt library) leaves its directory too, unmapped and
// unclaimed; ExtractionLoadGuard finds and removes it (see there).
//
// Thread-safety: every function may be called from any thread; concurrent
// sweeps at worst both try to delete a directory (errors are ignored).
// Claiming is meant to run right after each package load, under the
// process's loader mutex, so that it claims exactly that load's directory.
#pragma once

#include <chrono>
#include <cstddef>
#include <set>
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

// Brackets one package load (the loader's constructor) so that a failed load
// can delete the directory it extracted. Nothing on disk says which new
// directory a load made, and other pt2serve processes (the worker processes
// of an isolated model, other daemons) may be extracting the same package at
// the same moment. So every load holds a per-user lock file under the root
// SHARED, from before it extracts until its directory is claimed; a failed
// load takes the lock EXCLUSIVE, at which point no load of ours is between
// extracting and claiming, and so the directories that appeared since its
// snapshot and that nobody claimed are failed loads' leftovers. Of those it
// still skips any that a process maps or holds a file open in (another
// program's AOTInductor, which knows nothing of the lock).
//
// Not covered: a program outside this lock that is extracting at that very
// moment with no file open yet (a window of microseconds), and processes in
// other PID namespaces that share this root without pt2serve.
//
// Thread-safety: one guard per load, used by one thread; loads in one
// process are serialized by the caller (the loader mutex). Without a usable
// lock file (another user created it, a read-only root) the guard only
// claims, and a failed load's directory stays, as before.
class ExtractionLoadGuard {
 public:
  // Takes the lock SHARED (waits while a failed load is cleaning up) and
  // notes which entries `root` holds now.
  explicit ExtractionLoadGuard(std::string root = kExtractionRoot);
  ~ExtractionLoadGuard();  // releases the lock
  ExtractionLoadGuard(const ExtractionLoadGuard&) = delete;
  ExtractionLoadGuard& operator=(const ExtractionLoadGuard&) = delete;

  // After a successful load: claims its directory (ExtractionClaim::ClaimNew)
  // while the lock is still held.
  ExtractionClaim Claim() const { return ExtractionClaim::ClaimNew(root_); }

  // After a failed load: waits up to `wait` for the lock EXCLUSIVE, then
  // deletes the unclaimed, unused extraction directories of our user that
  // appeared since the constructor. Returns how many; 0 without the lock.
  // Best-effort: never throws.
  size_t RemoveLeftovers(std::chrono::milliseconds wait = std::chrono::seconds(30));

  bool locked() const { return lock_fd_ >= 0; }

 private:
  std::string root_;
  int lock_fd_ = -1;
  std::set<std::string> before_;  // entry names under root_ at construction
};

}  // namespace pt2serve
