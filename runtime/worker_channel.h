// WorkerChannel: one end of a message socket between the daemon and a
// pt2serve-worker process (AF_UNIX SOCK_SEQPACKET: message boundaries are
// kept, a peer that dies reads as end-of-stream, descriptors travel with
// SCM_RIGHTS).
//
// A message is a JSON value (sent as CBOR) plus up to kMaxFds descriptors.
// Bodies larger than a socket message are spilled into a SharedMemory file
// that travels as an extra descriptor, so callers never see a size limit.
// Tensor bytes never go through the socket: they live in SharedMemory.
//
// Ownership: a channel owns its socket; a received message owns its
// descriptors. Thread-safety: Send and Receive may run on different threads
// at once; two concurrent Receives on one channel are not allowed.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <utility>
#include <vector>

#include "common/status.h"

namespace pt2serve {

struct WorkerMessage {
  WorkerMessage() = default;
  WorkerMessage(WorkerMessage&& other) noexcept;
  WorkerMessage& operator=(WorkerMessage&& other) noexcept;
  ~WorkerMessage();
  // Takes descriptor i out of the message (the caller owns it; -1 if absent).
  int TakeFd(size_t i);

  nlohmann::json body;
  std::vector<int> fds;
};

class WorkerChannel {
 public:
  static constexpr size_t kMaxFds = 4;

  WorkerChannel() = default;
  explicit WorkerChannel(int fd) : fd_(fd) {}
  ~WorkerChannel();
  WorkerChannel(WorkerChannel&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  WorkerChannel& operator=(WorkerChannel&& other) noexcept;
  WorkerChannel(const WorkerChannel&) = delete;
  WorkerChannel& operator=(const WorkerChannel&) = delete;

  // A connected pair; both descriptors are close-on-exec.
  static StatusOr<std::pair<WorkerChannel, WorkerChannel>> CreatePair();

  // Sends `body` and duplicates of `fds` (the caller keeps its own).
  // UNAVAILABLE when the peer is gone.
  Status Send(const nlohmann::json& body, const std::vector<int>& fds = {}) const;
  // Blocks for the next message; UNAVAILABLE at end-of-stream (the peer
  // closed or died) or after Shutdown().
  StatusOr<WorkerMessage> Receive() const;
  // Waits until a message (or end-of-stream) can be received, at most until
  // `until`; false when that time came first.
  bool WaitReadable(std::chrono::steady_clock::time_point until) const;
  // Wakes a blocked Receive (it returns UNAVAILABLE) without closing.
  void Shutdown() const;

  int fd() const { return fd_; }
  // Gives up ownership of the descriptor.
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_ = -1;
};

}  // namespace pt2serve
