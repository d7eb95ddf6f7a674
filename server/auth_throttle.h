// AuthThrottle: counts failed admin authentications per client host, decides
// when a host is locked out, and rate-limits the log lines about failures.
//
// Policy (docs/operations.md): a host with kMaxFailures failures within
// kWindow is refused (RESOURCE_EXHAUSTED, without looking at its token) until
// its oldest counted failure is older than kWindow. At most one warning line
// per kLogInterval is written; it names the peer and how many failures were
// not logged since the previous line. At most kMaxHosts hosts are tracked
// (the least recently failing one is forgotten first), so a flood of peers
// cannot grow memory.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "common/status.h"

namespace pt2serve::server {

class AuthThrottle {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int kMaxFailures = 100;
  static constexpr std::chrono::seconds kWindow{10};
  static constexpr std::chrono::seconds kLogInterval{1};
  static constexpr size_t kMaxHosts = 1024;

  // OK when `peer` may try to authenticate now; RESOURCE_EXHAUSTED while its
  // host is locked out.
  Status Admit(const std::string& peer, Clock::time_point now = Clock::now());
  // Records a failed attempt of `peer` (a gRPC peer string such as
  // "ipv4:127.0.0.1:5555") and logs it when the rate limit allows.
  void RecordFailure(const std::string& peer, const Status& why,
                     Clock::time_point now = Clock::now());
  // Failures counted (logged or not) since the start.
  uint64_t total_failures() const;

  // "ipv4:127.0.0.1:5555" -> "ipv4:127.0.0.1"; "ipv6:[::1]:5" -> "ipv6:[::1]";
  // anything else unchanged.
  static std::string HostOf(const std::string& peer);

 private:
  // Drops failures of `host` older than kWindow. REQUIRES: mu_ held.
  void Expire(std::deque<Clock::time_point>& failures, Clock::time_point now) const;

  mutable std::mutex mu_;
  std::map<std::string, std::deque<Clock::time_point>> failures_;  // by host; guarded by mu_
  Clock::time_point last_log_{};                                   // guarded by mu_
  uint64_t unlogged_ = 0;                                          // guarded by mu_
  uint64_t total_ = 0;                                             // guarded by mu_
};

}  // namespace pt2serve::server
