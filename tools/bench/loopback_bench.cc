// loopback_bench: this host's round-trip floor, below any RPC stack.
//
// Each stream sends a small message to an echo thread over a pipe pair, a
// Unix socket pair or a loopback TCP connection and waits for it to come
// back (closed loop, one message outstanding). A round trip is two
// cross-thread wake-ups plus the kernel's transport path: what a gRPC call
// on the same host pays before gRPC, protobuf or the model do anything, so a
// latency target for gRPC on loopback cannot be below the `tcp` row.
//
//   loopback_bench --transport pipe,unix,tcp --streams 1 --seconds 3 --bytes 64
//       [--json out.jsonl]
//
// Prints one Markdown row per transport and stream count (bench_util.h
// format; the protocol column says "tcp echo", ...) and, with --json, appends
// the same rows as JSON objects.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tools/bench/bench_util.h"

namespace pt2serve::bench {
namespace {

// Reads or writes exactly `n` bytes; false on EOF or error.
bool ReadFull(int fd, char* buf, size_t n) {
  while (n > 0) {
    const ssize_t got = ::read(fd, buf, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    buf += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

bool WriteFull(int fd, const char* buf, size_t n) {
  while (n > 0) {
    const ssize_t put = ::write(fd, buf, n);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    buf += put;
    n -= static_cast<size_t>(put);
  }
  return true;
}

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

void SetNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// One stream's connection and its echo thread. The client writes to
// `client_out` and reads `client_in`; the echo thread does the reverse until
// it reads EOF. Destruction closes the client side and joins the thread.
class EchoLink {
 public:
  static StatusOr<std::unique_ptr<EchoLink>> Open(const std::string& transport, size_t bytes) {
    auto link = std::unique_ptr<EchoLink>(new EchoLink(bytes));
    if (transport == "pipe") {
      int a[2], b[2];
      if (::pipe(a) != 0) return Internal(Errno("pipe"));
      if (::pipe(b) != 0) {
        ::close(a[0]);
        ::close(a[1]);
        return Internal(Errno("pipe"));
      }
      link->client_out_ = a[1];
      link->echo_in_ = a[0];
      link->echo_out_ = b[1];
      link->client_in_ = b[0];
    } else if (transport == "unix") {
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return Internal(Errno("socketpair"));
      link->client_out_ = link->client_in_ = sv[0];
      link->echo_in_ = link->echo_out_ = sv[1];
    } else {
      PT2_RETURN_IF_ERROR(link->ConnectTcp());
    }
    link->echo_ = std::thread([l = link.get()] { l->EchoLoop(); });
    return link;
  }

  ~EchoLink() {
    CloseFd(client_out_);  // the echo thread reads EOF and returns
    if (client_in_ != client_out_) CloseFd(client_in_);
    if (echo_.joinable()) echo_.join();
    CloseFd(echo_in_);
    if (echo_out_ != echo_in_) CloseFd(echo_out_);
  }

  bool RoundTrip(std::string* error) {
    if (!WriteFull(client_out_, out_.data(), out_.size()) ||
        !ReadFull(client_in_, in_.data(), in_.size())) {
      *error = Errno("echo round trip");
      return false;
    }
    return true;
  }

 private:
  explicit EchoLink(size_t bytes) : out_(bytes, 'x'), in_(bytes) {}

  static void CloseFd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }

  Status ConnectTcp() {
    const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) return Internal(Errno("socket"));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    Status status = Status::Ok();
    if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
        ::listen(listener, 1) != 0) {
      status = Internal(Errno("listen on 127.0.0.1"));
    } else {
      client_out_ = client_in_ = ::socket(AF_INET, SOCK_STREAM, 0);
      if (client_out_ < 0 ||
          ::connect(client_out_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        status = Internal(Errno("connect to 127.0.0.1"));
      } else {
        echo_in_ = echo_out_ = ::accept(listener, nullptr, nullptr);
        if (echo_in_ < 0) status = Internal(Errno("accept"));
      }
    }
    ::close(listener);
    if (status.ok()) {
      SetNoDelay(client_out_);
      SetNoDelay(echo_in_);
    }
    return status;
  }

  void EchoLoop() {
    std::vector<char> buf(out_.size());
    while (ReadFull(echo_in_, buf.data(), buf.size()) &&
           WriteFull(echo_out_, buf.data(), buf.size())) {
    }
  }

  std::vector<char> out_, in_;
  int client_out_ = -1, client_in_ = -1, echo_in_ = -1, echo_out_ = -1;
  std::thread echo_;
};

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int Main(int argc, char** argv) {
  std::string transports = "pipe,unix,tcp";
  std::string streams = "1";
  double seconds = 3, warmup = 1;
  size_t bytes = 64;
  bool no_header = false;
  std::string json;
  CLI::App app{"loopback_bench: round-trip floor of this host (pipe, Unix socket, TCP echo)"};
  app.add_option("--transport", transports, "Comma-separated: pipe, unix, tcp")
      ->capture_default_str();
  app.add_option("--streams", streams, "Concurrent streams, a list runs each: 1,2,4")
      ->capture_default_str();
  app.add_option("--seconds", seconds, "Measured window")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", warmup, "Warm-up before each window, seconds")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--bytes", bytes, "Message size each way")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_flag("--no-header", no_header, "Do not print the Markdown table header");
  app.add_option("--json", json, "Append one JSON object per row to this file");
  CLI11_PARSE(app, argc, argv);

  auto stream_counts = ParseIntList(streams);
  if (!stream_counts.ok()) {
    std::fprintf(stderr, "loopback_bench: --streams %s\n",
                 stream_counts.status().ToString().c_str());
    return 2;
  }
  const std::vector<std::string> kinds = SplitList(transports);
  for (const std::string& kind : kinds) {
    if (kind != "pipe" && kind != "unix" && kind != "tcp") {
      std::fprintf(stderr, "loopback_bench: unknown transport '%s' (pipe, unix, tcp)\n",
                   kind.c_str());
      return 2;
    }
  }
  if (!no_header) std::printf("%s\n", MarkdownHeader().c_str());
  bool failed = false;
  for (const std::string& kind : kinds) {
    for (int n : *stream_counts) {
      DriverResult r = RunClosedLoop({n, warmup, seconds}, [&](int) -> BenchCall {
        auto link = EchoLink::Open(kind, bytes);
        if (!link.ok()) {
          const std::string message = link.status().ToString();
          return [message](std::string* error) {
            *error = message;
            return false;
          };
        }
        std::shared_ptr<EchoLink> shared = std::move(link).value();
        return [shared](std::string* error) { return shared->RoundTrip(error); };
      });
      const int rc = EmitRow(
          "loopback_bench", ResultRow{kind + " echo", "echo " + std::to_string(bytes) + " B", 1, r},
          json);
      if (rc == 2) return 2;
      failed = failed || rc == 1;
    }
  }
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace pt2serve::bench

int main(int argc, char** argv) { return pt2serve::bench::Main(argc, argv); }
