#include "runtime/worker_channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "runtime/shared_memory.h"

namespace pt2serve {
namespace {

// Largest body sent inline: well under the default socket buffer
// (net.core.wmem_default, ~208 KiB), which bounds a SEQPACKET message.
constexpr size_t kMaxInline = 64 * 1024;
constexpr char kSpillKey[] = "$spill";

void CloseAll(std::vector<int>& fds) {
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  fds.clear();
}

Status SendRaw(int socket, const std::vector<uint8_t>& bytes, const std::vector<int>& fds) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * WorkerChannel::kMaxFds)] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  while (true) {
    ssize_t n = sendmsg(socket, &msg, MSG_NOSIGNAL);
    if (n >= 0) return Status::Ok();
    if (errno == EINTR) continue;
    return Unavailable(std::string("worker channel closed (") + std::strerror(errno) + ")");
  }
}

}  // namespace

WorkerMessage::WorkerMessage(WorkerMessage&& other) noexcept
    : body(std::move(other.body)), fds(std::move(other.fds)) {
  other.fds.clear();
}

WorkerMessage& WorkerMessage::operator=(WorkerMessage&& other) noexcept {
  if (this != &other) {
    CloseAll(fds);
    body = std::move(other.body);
    fds = std::move(other.fds);
    other.fds.clear();
  }
  return *this;
}

WorkerMessage::~WorkerMessage() { CloseAll(fds); }

int WorkerMessage::TakeFd(size_t i) {
  if (i >= fds.size()) return -1;
  return std::exchange(fds[i], -1);
}

WorkerChannel::~WorkerChannel() {
  if (fd_ >= 0) close(fd_);
}

WorkerChannel& WorkerChannel::operator=(WorkerChannel&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

StatusOr<std::pair<WorkerChannel, WorkerChannel>> WorkerChannel::CreatePair() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return ResourceExhausted(std::string("socketpair: ") + std::strerror(errno));
  }
  return std::make_pair(WorkerChannel(sv[0]), WorkerChannel(sv[1]));
}

Status WorkerChannel::Send(const nlohmann::json& body, const std::vector<int>& fds) const {
  if (fds.size() + 1 > kMaxFds) return Internal("too many descriptors in one worker message");
  std::vector<uint8_t> bytes = nlohmann::json::to_cbor(body);
  if (bytes.size() <= kMaxInline) return SendRaw(fd_, bytes, fds);
  PT2_ASSIGN_OR_RETURN(SharedMemory spill, SharedMemory::Create(bytes.size(), "pt2serve-msg"));
  std::memcpy(spill.data(), bytes.data(), bytes.size());
  std::vector<int> with_spill = fds;
  with_spill.push_back(spill.fd());
  nlohmann::json stub = {{kSpillKey, bytes.size()}};
  return SendRaw(fd_, nlohmann::json::to_cbor(stub), with_spill);
}

StatusOr<WorkerMessage> WorkerChannel::Receive() const {
  std::vector<uint8_t> buffer(kMaxInline + 1024);
  iovec iov{buffer.data(), buffer.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  WorkerMessage out;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        out.fds.push_back(fd);
      }
    }
  }
  if (n < 0) return Unavailable(std::string("worker channel: ") + std::strerror(errno));
  if (n == 0) return Unavailable("worker channel closed");
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return Internal("worker message truncated");
  buffer.resize(static_cast<size_t>(n));
  try {
    out.body = nlohmann::json::from_cbor(buffer);
    if (out.body.is_object() && out.body.contains(kSpillKey)) {
      const size_t size = out.body[kSpillKey].get<size_t>();
      if (out.fds.empty()) return Internal("spilled worker message without its descriptor");
      int fd = out.fds.back();
      out.fds.pop_back();
      PT2_ASSIGN_OR_RETURN(SharedMemory spill, SharedMemory::Map(fd, size, /*writable=*/false));
      const auto* bytes = reinterpret_cast<const uint8_t*>(spill.data());
      out.body = nlohmann::json::from_cbor(bytes, bytes + size);
    }
  } catch (const std::exception& e) {
    return Internal(std::string("malformed worker message: ") + e.what());
  }
  return out;
}

bool WorkerChannel::WaitReadable(std::chrono::steady_clock::time_point until) const {
  while (true) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    pollfd p{fd_, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left.count(), 0, 60000)));
    if (ready > 0) return true;  // readable, hung up or failed: Receive reports which
    if (ready < 0 && errno != EINTR) return true;
    if (ready == 0 && std::chrono::steady_clock::now() >= until) return false;
  }
}

void WorkerChannel::Shutdown() const {
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
}

}  // namespace pt2serve
