#include "common/background_sha256.h"

#include <algorithm>
#include <vector>

namespace pt2serve {

BackgroundSha256::~BackgroundSha256() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    queue_.clear();
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void BackgroundSha256::Update(const void* data, size_t size) {
  if (size == 0) return;
  const auto* bytes = static_cast<const std::byte*>(data);
  {
    std::lock_guard lock(mu_);
    if (!queue_.empty() && queue_.back().data + queue_.back().size == bytes) {
      queue_.back().size += size;  // contiguous with the last range: no extra hand-off
    } else {
      queue_.push_back({bytes, size});
    }
    if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
  }
  wake_.notify_one();
}

void BackgroundSha256::Run() {
  std::unique_lock lock(mu_);
  while (true) {
    wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    std::vector<Range> batch(queue_.begin(), queue_.end());
    queue_.clear();
    busy_ = true;
    lock.unlock();
    // Slices keep progress current and let the destructor stop an abandoned
    // stream within one slice.
    constexpr size_t kSlice = 16 << 20;
    bool stopping = false;
    for (const Range& r : batch) {
      for (size_t done = 0; done < r.size && !stopping; done += kSlice) {
        const size_t n = std::min(kSlice, r.size - done);
        hasher_.Update(r.data + done, n);
        std::lock_guard progress(mu_);
        hashed_ += n;
        stopping = stop_ || abandoning_;
      }
    }
    lock.lock();
    busy_ = false;
    idle_.notify_all();
  }
}

std::string BackgroundSha256::FinishHex() {
  std::unique_lock lock(mu_);
  idle_.wait(lock, [&] { return queue_.empty() && !busy_; });
  // The helper is parked in wake_.wait: hasher_ is ours until the next Update.
  hashed_ = 0;
  return hasher_.FinishHex();
}

void BackgroundSha256::Abandon() {
  std::unique_lock lock(mu_);
  queue_.clear();
  abandoning_ = true;
  idle_.wait(lock, [&] { return !busy_; });
  abandoning_ = false;
  // The helper is parked in wake_.wait: hasher_ is ours until the next Update.
  hashed_ = 0;
  hasher_.Reset();
}

uint64_t BackgroundSha256::bytes_hashed() const {
  std::lock_guard lock(mu_);
  return hashed_;
}

}  // namespace pt2serve
