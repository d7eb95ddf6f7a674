// Clean-up of AOTInductor's package extraction directories.
//
// Loading a .pt2 extracts its shared library and kernels into a fresh
// directory under /tmp (hard-coded by AOTInductor, e.g.
// /tmp/aotinductor_XXXXXX, 2-200 MB each), which the loader removes when it
// is destroyed. A process that dies first (a crashed or killed
// pt2serve-worker, a daemon killed by the OOM killer) leaves it behind; a
// crash-looping isolated model left one per restart, on a /tmp that is often
// RAM (tmpfs).
//
// So every process that loads packages marks the directories it extracted
// with an owner file (ClaimExtractionDirs: its PID, the process's start time
// and its PID namespace), and RemoveStaleExtractionDirs deletes the marked
// directories whose owner is gone. The daemon sweeps at start-up and each
// time it reaps a worker process. Directories without a marker (another
// program's, or a load still in progress) and those of live processes, or of
// processes in another PID namespace (whose PIDs cannot be checked from
// here), are never touched.
//
// Thread-safety: both functions may be called from any thread; concurrent
// sweeps at worst both try to delete a directory (errors are ignored).
#pragma once

#include <cstddef>
#include <string>

namespace pt2serve {

// The root AOTInductor extracts into.
inline constexpr const char* kExtractionRoot = "/tmp";
// The marker file's name inside an extraction directory.
inline constexpr const char* kExtractionOwnerFile = ".pt2serve-owner";

// Marks the extraction directories of packages this process has loaded (found
// through the libraries it has mapped from `root`) that carry no marker yet.
// Returns how many were marked. Best-effort: never throws.
size_t ClaimExtractionDirs(const std::string& root = kExtractionRoot);

// Deletes the marked directories directly under `root` whose owner process
// has exited. Returns how many were deleted. Best-effort: never throws.
size_t RemoveStaleExtractionDirs(const std::string& root = kExtractionRoot);

}  // namespace pt2serve
