// Resident memory of this process (Linux /proc/self/status), and the peak of
// it during an operation (a weight push).
//
// The kernel keeps one high-water mark per process (VmHWM). Writing "5" to
// /proc/self/clear_refs resets it to the current RSS, which is how
// PeakRssWindow measures the peak of one operation exactly instead of by
// sampling. Resetting is coordinated process-wide: only the first of
// overlapping windows resets, so a window that overlaps another reports a
// peak that may include the other's (an over-estimate, never an
// under-estimate). The lifetime peak survives resets (ReadProcessMemory
// folds in every value seen before one).
//
// Thread-safety: every function and PeakRssWindow may be used from any thread.
#pragma once

#include <cstddef>

namespace pt2serve {

struct ProcessMemory {
  size_t rss_bytes = 0;       // VmRSS now; 0 when /proc is unreadable
  size_t peak_rss_bytes = 0;  // highest VmRSS since the process started
};

ProcessMemory ReadProcessMemory();

// Measures the process's peak RSS from construction until Finish().
class PeakRssWindow {
 public:
  PeakRssWindow();
  ~PeakRssWindow();  // closes the window if Finish() was not called
  PeakRssWindow(const PeakRssWindow&) = delete;
  PeakRssWindow& operator=(const PeakRssWindow&) = delete;

  size_t rss_before() const { return rss_before_; }
  // Records the current RSS (for when the kernel's mark cannot be reset).
  void Sample();
  // Closes the window and returns the peak RSS within it (>= rss_before()).
  // Idempotent: later calls return the same value.
  size_t Finish();

 private:
  size_t rss_before_ = 0;
  size_t peak_ = 0;
  bool exact_ = false;  // this window (or an overlapping one) reset VmHWM
  bool open_ = true;
};

}  // namespace pt2serve
