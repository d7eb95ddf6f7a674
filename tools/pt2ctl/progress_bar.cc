#include "tools/pt2ctl/progress_bar.h"

#include <algorithm>

namespace pt2serve::ctl {

ProgressBar::ProgressBar(std::string label, uint64_t total, bool enabled, std::FILE* out)
    : label_(std::move(label)), total_(total), enabled_(enabled), out_(out),
      start_(Clock::now()) {}

ProgressBar::~ProgressBar() { Finish(); }

double ProgressBar::elapsed_seconds() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

void ProgressBar::Update(uint64_t done) {
  done_ = done;
  if (!enabled_ || finished_) return;
  const auto now = Clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  Draw();
}

void ProgressBar::SetLabel(std::string label) {
  label_ = std::move(label);
  if (enabled_ && !finished_) Draw();
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  Draw();
  std::fputc('\n', out_);
  std::fflush(out_);
}

void ProgressBar::Draw() {
  std::string line = Render(label_, done_, total_, elapsed_seconds());
  const size_t length = line.size();
  // Blank out what is left of a longer previous line.
  if (length < last_length_) line.append(last_length_ - length, ' ');
  last_length_ = length;
  std::fprintf(out_, "\r%s", line.c_str());
  std::fflush(out_);
}

std::string ProgressBar::Render(std::string_view label, uint64_t done, uint64_t total,
                                double seconds, int width) {
  const double fraction =
      total == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / static_cast<double>(total));
  const int filled = static_cast<int>(fraction * width);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), '.');
  const double mb_per_s = seconds > 0 ? static_cast<double>(done) / 1e6 / seconds : 0.0;
  // Two decimals below 100 MB, so small pushes do not read "0.0/0.0 MB".
  const int decimals = total < 100'000'000 ? 2 : 1;
  char buf[160];
  std::snprintf(buf, sizeof(buf), " %3d%% [%s] %7.*f/%.*f MB %8.1f MB/s",
                static_cast<int>(fraction * 100.0), bar.c_str(), decimals,
                static_cast<double>(done) / 1e6, decimals, static_cast<double>(total) / 1e6,
                mb_per_s);
  return std::string(label) + buf;
}

std::string FormatBytes(uint64_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (bytes < 1000) {
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(bytes));
  } else if (bytes < 1000'000) {
    std::snprintf(buf, sizeof(buf), "%.1f KB", b / 1e3);
  } else if (bytes < 1000'000'000) {
    std::snprintf(buf, sizeof(buf), "%.1f MB", b / 1e6);
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f GB", b / 1e9);
  }
  return buf;
}

}  // namespace pt2serve::ctl
