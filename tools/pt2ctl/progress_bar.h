// ProgressBar: a one-line transfer progress display for a terminal.
//
//   push mlp  42% [############............]  12.3/29.4 MB   85.1 MB/s
//
// Redraws in place with '\r', at most ten times a second. A disabled bar
// (stderr is not a TTY, or --json) prints nothing, so callers need no
// branches. Thread-safety: not thread-safe; one thread drives a bar.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace pt2serve::ctl {

class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;

  // `total` bytes will be reported through Update(). `out` is not owned.
  ProgressBar(std::string label, uint64_t total, bool enabled, std::FILE* out = stderr);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // `done` bytes so far (monotonic). Redraws if 100 ms passed since the last
  // redraw.
  void Update(uint64_t done);
  // Changes the label (e.g. "staging") and redraws.
  void SetLabel(std::string label);
  // Final redraw and newline; later calls do nothing. Called by the
  // destructor if needed.
  void Finish();

  // Seconds since construction.
  double elapsed_seconds() const;

  // The text of one line (pure; for tests). `width` is the bar width in
  // characters; `total` 0 renders as 100%.
  static std::string Render(std::string_view label, uint64_t done, uint64_t total,
                            double seconds, int width = 24);

 private:
  void Draw();

  std::string label_;
  const uint64_t total_;
  const bool enabled_;
  std::FILE* out_;
  const Clock::time_point start_;
  Clock::time_point last_draw_{};
  uint64_t done_ = 0;
  size_t last_length_ = 0;
  bool finished_ = false;
};

// "0 B", "812 B", "1.5 KB", "12.3 MB", "2.00 GB" (decimal units, like MB/s).
std::string FormatBytes(uint64_t bytes);

}  // namespace pt2serve::ctl
