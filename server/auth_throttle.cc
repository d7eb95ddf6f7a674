#include "server/auth_throttle.h"

#include <algorithm>

#include "server/logging.h"

namespace pt2serve::server {

std::string AuthThrottle::HostOf(const std::string& peer) {
  if (!peer.starts_with("ipv4:") && !peer.starts_with("ipv6:")) return peer;
  const auto colon = peer.rfind(':');
  return colon <= 4 ? peer : peer.substr(0, colon);
}

void AuthThrottle::Expire(std::deque<Clock::time_point>& failures, Clock::time_point now) const {
  while (!failures.empty() && now - failures.front() >= kWindow) failures.pop_front();
}

Status AuthThrottle::Admit(const std::string& peer, Clock::time_point now) {
  const std::string host = HostOf(peer);
  std::lock_guard lock(mu_);
  auto it = failures_.find(host);
  if (it == failures_.end()) return Status::Ok();
  Expire(it->second, now);
  if (it->second.empty()) {
    failures_.erase(it);
    return Status::Ok();
  }
  if (it->second.size() < static_cast<size_t>(kMaxFailures)) return Status::Ok();
  const auto wait = std::chrono::ceil<std::chrono::seconds>(kWindow - (now - it->second.front()));
  return ResourceExhausted("too many failed admin authentications from this address; retry in " +
                           std::to_string(wait.count()) + " s");
}

void AuthThrottle::RecordFailure(const std::string& peer, const Status& why,
                                 Clock::time_point now) {
  const std::string host = HostOf(peer);
  bool log = false;
  bool locked_now = false;
  uint64_t unlogged = 0;
  {
    std::lock_guard lock(mu_);
    ++total_;
    if (!failures_.contains(host) && failures_.size() >= kMaxHosts) {
      // Forget the host whose latest failure is the oldest.
      auto oldest = std::min_element(failures_.begin(), failures_.end(), [](auto& a, auto& b) {
        return a.second.back() < b.second.back();
      });
      failures_.erase(oldest);
    }
    auto& failures = failures_[host];
    Expire(failures, now);
    // Past the limit nothing more is counted, so a lock-out ends kWindow after
    // it began even under a steady flood.
    if (failures.size() < static_cast<size_t>(kMaxFailures)) {
      failures.push_back(now);
      locked_now = failures.size() == static_cast<size_t>(kMaxFailures);
    }
    if (locked_now || now - last_log_ >= kLogInterval) {
      log = true;
      last_log_ = now;
      unlogged = unlogged_;
      unlogged_ = 0;
    } else {
      ++unlogged_;
    }
  }
  if (!log) return;
  auto logger = Logger("admin");
  logger->warn("admin authentication failed from {}: {}{}", peer, why.message(),
               unlogged ? fmt::format(" ({} more failed attempts not logged)", unlogged) : "");
  if (locked_now) {
    logger->warn("admin: refusing {} for up to {} s after {} failed authentications", host,
                 kWindow.count(), kMaxFailures);
  }
}

uint64_t AuthThrottle::total_failures() const {
  std::lock_guard lock(mu_);
  return total_;
}

}  // namespace pt2serve::server
