#include "common/process_memory.h"

#include <algorithm>
#include <fstream>
#include <mutex>
#include <string>

namespace pt2serve {
namespace {

struct StatusFields {
  size_t rss = 0;
  size_t hwm = 0;
};

// VmRSS and VmHWM (kB in the file) in bytes; zeros when unreadable.
StatusFields ReadStatus() {
  StatusFields out;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    auto value = [&](const char* key) -> size_t {
      const std::string k(key);
      if (line.compare(0, k.size(), k) != 0) return 0;
      return static_cast<size_t>(std::stoull(line.substr(k.size()))) * 1024;
    };
    if (line.starts_with("VmRSS:")) out.rss = value("VmRSS:");
    if (line.starts_with("VmHWM:")) out.hwm = value("VmHWM:");
  }
  return out;
}

// Process-wide state of the kernel's high-water mark.
struct PeakState {
  std::mutex mu;
  int open_windows = 0;        // guarded by mu
  bool reset_worked = false;   // guarded by mu: the open windows' reset took effect
  size_t lifetime_peak = 0;    // guarded by mu: highest VmHWM read before a reset
};

PeakState& State() {
  static PeakState state;
  return state;
}

bool ResetHighWaterMark() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

}  // namespace

ProcessMemory ReadProcessMemory() {
  PeakState& s = State();
  std::lock_guard lock(s.mu);
  const StatusFields f = ReadStatus();
  return {f.rss, std::max({f.hwm, f.rss, s.lifetime_peak})};
}

PeakRssWindow::PeakRssWindow() {
  PeakState& s = State();
  std::lock_guard lock(s.mu);
  const StatusFields f = ReadStatus();
  if (s.open_windows++ == 0) {
    s.lifetime_peak = std::max(s.lifetime_peak, f.hwm);
    s.reset_worked = ResetHighWaterMark();
  }
  exact_ = s.reset_worked;
  rss_before_ = f.rss;
  peak_ = f.rss;
}

PeakRssWindow::~PeakRssWindow() { Finish(); }

void PeakRssWindow::Sample() {
  if (!open_) return;
  peak_ = std::max(peak_, ReadStatus().rss);
}

size_t PeakRssWindow::Finish() {
  if (!open_) return peak_;
  open_ = false;
  PeakState& s = State();
  std::lock_guard lock(s.mu);
  const StatusFields f = ReadStatus();
  peak_ = std::max(peak_, f.rss);
  if (exact_) peak_ = std::max(peak_, f.hwm);
  // The kernel's counters lag a little (per-thread RSS caching): a sample
  // may exceed its mark, so the lifetime peak takes ours too.
  s.lifetime_peak = std::max({s.lifetime_peak, f.hwm, peak_});
  --s.open_windows;
  return peak_;
}

}  // namespace pt2serve
