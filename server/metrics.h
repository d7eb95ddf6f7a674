// Metrics: owns the Prometheus registry and the /metrics HTTP endpoint.
//
// Request counters and latency histograms are recorded on the request path
// (series are resolved once per model/protocol/code and cached). Gauges that
// describe current state (in-flight, queue depth, model state, weights
// version) are read from the ModelRegistry at scrape time, so they can never
// drift from the truth.
//
// /metrics is served by prometheus-cpp's Exposer (civetweb): a pool of
// kMetricsThreads threads, each request cut off after kMetricsRequestTimeout,
// so a slow or silent scraper holds one thread for a bounded time and never
// blocks the others or shutdown (docs/operations.md).
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "runtime/model_registry.h"
#include "runtime/runner_pool.h"

namespace prometheus {
class Exposer;
class Registry;
class Counter;
class Histogram;
template <typename T> class Family;
}  // namespace prometheus

namespace pt2serve::server {

// /metrics serving threads, and how long one HTTP request (headers included)
// may take before civetweb drops the connection.
inline constexpr int kMetricsThreads = 32;
inline constexpr std::chrono::milliseconds kMetricsRequestTimeout{3000};

enum class Protocol { kKServe, kNative };
// Model label of requests for names the server does not know.
inline constexpr std::string_view kUnknownModelLabel = "_unknown";
std::string_view ProtocolName(Protocol p);  // "kserve" / "pt2serve"

class Metrics {
 public:
  // Serves /metrics on `address` ("host:port", "[v6]:port"; port 0 picks
  // one); "" = collect without serving. INVALID_ARGUMENT for an address that
  // is not host:port, UNAVAILABLE when it cannot bind. `registry` must outlive
  // this object.
  static StatusOr<std::unique_ptr<Metrics>> Create(const std::string& address,
                                                   const ModelRegistry& registry);
  ~Metrics();

  void RecordRequest(const std::string& model, Protocol protocol, StatusCode code,
                     const RequestTiming& timing, std::chrono::nanoseconds total);
  // Rows of one container call (a formed batch, or a request run alone).
  void RecordBatch(const std::string& model, int64_t rows);
  // Load durations and load failures, from registry state changes; an
  // UNLOADED model's series are removed (RemoveModel).
  void RecordStateChange(const ModelStatus& status);
  // Drops every series labelled with `model` (requests, latencies, loads).
  void RemoveModel(const std::string& model);
  // Prometheus text exposition of everything (what /metrics returns).
  std::string Render() const;
  // Port /metrics listens on (0 when not serving).
  int port() const;

 private:
  struct Series;
  explicit Metrics(const ModelRegistry& registry);
  Series& SeriesFor(const std::string& model, Protocol protocol, StatusCode code);

  std::shared_ptr<prometheus::Registry> prom_;
  std::shared_ptr<class StateCollector> state_;
  std::unique_ptr<prometheus::Exposer> exposer_;  // null when not serving
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Family<prometheus::Histogram>* queue_seconds_ = nullptr;
  prometheus::Family<prometheus::Histogram>* compute_seconds_ = nullptr;
  prometheus::Family<prometheus::Histogram>* request_seconds_ = nullptr;
  prometheus::Family<prometheus::Histogram>* load_seconds_ = nullptr;
  prometheus::Family<prometheus::Histogram>* batch_rows_ = nullptr;
  prometheus::Family<prometheus::Counter>* load_failures_ = nullptr;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Series>> series_;  // guarded by mu_
  std::map<std::string, prometheus::Histogram*> batch_series_;  // guarded by mu_
};

}  // namespace pt2serve::server
