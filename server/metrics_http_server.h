// MetricsHttpServer: serves the Prometheus text exposition at GET /metrics.
//
// A deliberately small HTTP/1.1 server (one thread, one connection at a
// time, Connection: close): scrapes are infrequent, and it depends on nothing
// but POSIX sockets, so /metrics works on every host the daemon runs on.
//
// Thread-safety: Start/destructor from one thread; `render` is called on the
// server's thread and must be thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "common/status.h"

namespace pt2serve::server {

class MetricsHttpServer {
 public:
  using Render = std::function<std::string()>;

  // Listens on `address` ("host:port", "[v6]:port"; port 0 picks one).
  // UNAVAILABLE when it cannot bind.
  static StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                            Render render);
  // Stops accepting and joins the thread.
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer(int listen_fd, int wake_fd_read, int wake_fd_write, int port, Render render);
  void Loop();
  void Serve(int fd);

  const int listen_fd_;
  const int wake_read_, wake_write_;  // a pipe that wakes poll() for shutdown
  const int port_;
  const Render render_;
  std::thread thread_;
};

}  // namespace pt2serve::server
