#include "server/metrics.h"

#include <netdb.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <exception>

#include "common/process_memory.h"
#include "devices/device_memory.h"
#include "runtime/constant_buffer_manager.h"

namespace pt2serve::server {
namespace {

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,    0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0};
  return kBuckets;
}

double Seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

prometheus::ClientMetric Gauge(std::vector<prometheus::ClientMetric::Label> labels, double v) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = v;
  return m;
}

prometheus::ClientMetric Count(std::vector<prometheus::ClientMetric::Label> labels, double v) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = v;
  return m;
}

prometheus::MetricFamily Family(std::string name, std::string help, prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

// Civetweb's listening_ports value for "host:port": civetweb takes numeric
// addresses only, so a host name is resolved here (first address wins).
StatusOr<std::string> CivetListeningPort(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size()) {
    return InvalidArgument("metrics address '" + address + "' is not host:port");
  }
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5) {
    return InvalidArgument("metrics address '" + address + "': port '" + port +
                           "' is not a number");
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) return port;  // every interface
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found); rc != 0) {
    return Unavailable("cannot resolve metrics address '" + address + "': " + gai_strerror(rc));
  }
  char numeric[NI_MAXHOST] = {};
  const int rc = getnameinfo(found->ai_addr, found->ai_addrlen, numeric, sizeof(numeric), nullptr,
                             0, NI_NUMERICHOST);
  const bool v6 = found->ai_family == AF_INET6;
  freeaddrinfo(found);
  if (rc != 0) return Unavailable("cannot resolve metrics address '" + address + "'");
  return v6 ? "[" + std::string(numeric) + "]:" + port : std::string(numeric) + ":" + port;
}

}  // namespace

// Current state read from the registry at scrape time.
class StateCollector : public prometheus::Collectable {
 public:
  explicit StateCollector(const ModelRegistry& registry) : registry_(registry) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    auto state = Family("pt2serve_model_state",
                        "1 for the state each model is in, 0 for the others", MetricType::Gauge);
    auto in_flight = Family("pt2serve_inflight_requests",
                            "Requests running on a model's runners now", MetricType::Gauge);
    auto queued = Family("pt2serve_queue_depth", "Requests waiting for a runner now",
                         MetricType::Gauge);
    auto runners = Family("pt2serve_model_runners", "Runners (concurrent executions) per model",
                          MetricType::Gauge);
    auto version = Family("pt2serve_weights_version_info",
                          "Active weights version of each model (value is always 1)",
                          MetricType::Gauge);
    auto rejected = Family("pt2serve_queue_rejected_total",
                           "Requests rejected because the model's queue was full",
                           MetricType::Counter);
    auto expired = Family("pt2serve_queue_expired_total",
                          "Requests whose deadline passed while queued", MetricType::Counter);
    auto restarts = Family("pt2serve_model_restarts_total",
                           "Worker process restarts of a model with isolation: process",
                           MetricType::Counter);
    auto weights_memory = Family(
        "pt2serve_weights_memory_bytes",
        "Memory a model's weights hold, by buffer (active, inactive, upload) and memory "
        "(host, device); folded: the constant-folded part of a buffer",
        MetricType::Gauge);
    auto staging = Family("pt2serve_weights_staging_bytes",
                          "Memory a model holds for weight staging (upload buffers + inactive "
                          "buffer), counted against the staging budgets",
                          MetricType::Gauge);
    auto push_peak = Family("pt2serve_weights_push_peak_bytes",
                            "During the last weight push to a model: the daemon's peak resident "
                            "memory (process_rss) and its devices' peak used memory (device_used)",
                            MetricType::Gauge);
    for (const ModelStatus& s : registry_.List()) {
      for (auto st : {ModelState::kLoading, ModelState::kReady, ModelState::kUnloading,
                      ModelState::kFailed, ModelState::kRestarting}) {
        state.metric.push_back(Gauge({{"model", s.name}, {"state", std::string(ModelStateName(st))}},
                                     s.state == st ? 1 : 0));
      }
      auto handle = registry_.Get(s.name);
      if (!handle.ok()) continue;
      const auto stats = (*handle)->pool().stats();
      in_flight.metric.push_back(Gauge({{"model", s.name}}, stats.in_flight));
      queued.metric.push_back(Gauge({{"model", s.name}}, stats.queued));
      runners.metric.push_back(Gauge({{"model", s.name}}, (*handle)->pool().num_runners()));
      version.metric.push_back(
          Gauge({{"model", s.name}, {"version", (*handle)->weights_version()}}, 1));
      rejected.metric.push_back(Count({{"model", s.name}}, stats.rejected));
      expired.metric.push_back(Count({{"model", s.name}}, stats.expired));
      restarts.metric.push_back(Count({{"model", s.name}}, s.restarts));
      const BufferStatus weights = (*handle)->weights().status();
      auto buffer = [&](const char* name, const BufferMemory& m) {
        weights_memory.metric.push_back(
            Gauge({{"model", s.name}, {"buffer", name}, {"memory", "host"}}, m.host_bytes));
        weights_memory.metric.push_back(
            Gauge({{"model", s.name}, {"buffer", name}, {"memory", "device"}}, m.device_bytes));
        weights_memory.metric.push_back(
            Gauge({{"model", s.name}, {"buffer", name}, {"memory", "folded"}}, m.folded_bytes));
      };
      buffer("active", weights.active_memory);
      buffer("inactive", weights.inactive_memory);
      weights_memory.metric.push_back(Gauge(
          {{"model", s.name}, {"buffer", "upload"}, {"memory", "host"}}, weights.upload_bytes));
      weights_memory.metric.push_back(
          Gauge({{"model", s.name}, {"buffer", "upload"}, {"memory", "device"}},
                weights.device_upload_bytes));
      staging.metric.push_back(Gauge({{"model", s.name}}, weights.staging_bytes));
      if (!weights.last_push.version.empty()) {
        push_peak.metric.push_back(Gauge({{"model", s.name}, {"memory", "process_rss"}},
                                         weights.last_push.process_peak_rss));
        push_peak.metric.push_back(Gauge({{"model", s.name}, {"memory", "device_used"}},
                                         weights.last_push.device_peak_used));
      }
    }
    auto server_staging = Family("pt2serve_server_weights_staging_bytes",
                                 "Weight staging memory held by all models (in_use) and "
                                 "server.weights_staging_budget_bytes (budget; 0 = no limit)",
                                 MetricType::Gauge);
    if (const StagingBudget* budget = registry_.staging_budget()) {
      server_staging.metric.push_back(Gauge({{"kind", "in_use"}}, budget->in_use()));
      server_staging.metric.push_back(Gauge({{"kind", "budget"}}, budget->limit()));
    }
    auto process = Family("pt2serve_process_resident_memory_bytes",
                          "The daemon's resident memory (VmRSS) now and its peak since start",
                          MetricType::Gauge);
    const ProcessMemory rss = ReadProcessMemory();
    process.metric.push_back(Gauge({{"kind", "current"}}, rss.rss_bytes));
    process.metric.push_back(Gauge({{"kind", "peak"}}, rss.peak_rss_bytes));
    auto memory = Family("pt2serve_device_memory_bytes",
                         "Accelerator memory held by the caching allocator, by device",
                         MetricType::Gauge);
    for (const DeviceMemory& m : QueryDeviceMemory()) {
      memory.metric.push_back(Gauge({{"device", m.device}, {"kind", "allocated"}}, m.allocated));
      memory.metric.push_back(Gauge({{"device", m.device}, {"kind", "reserved"}}, m.reserved));
    }
    return {state,          in_flight,  queued,    runners, version,       rejected, expired,
            restarts,       memory,     weights_memory, staging, push_peak, server_staging,
            process};
  }

 private:
  const ModelRegistry& registry_;
};

struct Metrics::Series {
  prometheus::Counter* requests;
  prometheus::Histogram* queue;
  prometheus::Histogram* compute;
  prometheus::Histogram* total;
};

std::string_view ProtocolName(Protocol p) {
  return p == Protocol::kKServe ? "kserve" : "pt2serve";
}

Metrics::Metrics(const ModelRegistry& registry)
    : prom_(std::make_shared<prometheus::Registry>()),
      state_(std::make_shared<StateCollector>(registry)) {
  requests_ = &prometheus::BuildCounter()
                   .Name("pt2serve_requests_total")
                   .Help("Inference requests by model, protocol and gRPC status code")
                   .Register(*prom_);
  queue_seconds_ = &prometheus::BuildHistogram()
                        .Name("pt2serve_queue_duration_seconds")
                        .Help("Time requests waited for a runner (with dynamic batching: "
                              "for their batch to start)")
                        .Register(*prom_);
  compute_seconds_ = &prometheus::BuildHistogram()
                          .Name("pt2serve_compute_duration_seconds")
                          .Help("Time requests spent running on a runner")
                          .Register(*prom_);
  request_seconds_ = &prometheus::BuildHistogram()
                          .Name("pt2serve_request_duration_seconds")
                          .Help("Server-side time from receiving a request to answering it")
                          .Register(*prom_);
  load_seconds_ = &prometheus::BuildHistogram()
                       .Name("pt2serve_model_load_duration_seconds")
                       .Help("Time to load a model package")
                       .Register(*prom_);
  batch_rows_ = &prometheus::BuildHistogram()
                    .Name("pt2serve_batch_size")
                    .Help("Rows per container call (the batch the dynamic batcher formed, or "
                          "a request run alone)")
                    .Register(*prom_);
  load_failures_ = &prometheus::BuildCounter()
                        .Name("pt2serve_model_load_failures_total")
                        .Help("Model loads that failed")
                        .Register(*prom_);
}

Metrics::~Metrics() { exposer_.reset(); }  // stop serving before the registry goes

StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& address,
                                                   const ModelRegistry& registry) {
  std::unique_ptr<Metrics> metrics(new Metrics(registry));
  if (address.empty()) return metrics;
  PT2_ASSIGN_OR_RETURN(const std::string listen, CivetListeningPort(address));
  try {
    metrics->exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", listen,
        "num_threads", std::to_string(kMetricsThreads),
        "request_timeout_ms", std::to_string(kMetricsRequestTimeout.count()),
        "enable_keep_alive", "no"});
  } catch (const std::exception& e) {
    // civetweb reports a taken port (and any other bind failure) by throwing.
    return Unavailable("cannot serve /metrics on " + address + ": " + e.what());
  }
  metrics->exposer_->RegisterCollectable(metrics->prom_);
  metrics->exposer_->RegisterCollectable(metrics->state_);
  return metrics;
}

int Metrics::port() const {
  if (!exposer_) return 0;
  const auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

Metrics::Series& Metrics::SeriesFor(const std::string& model, Protocol protocol,
                                    StatusCode code) {
  std::string key = model;
  key += '\0';
  key += ProtocolName(protocol);
  key += '\0';
  key += std::to_string(static_cast<int>(code));
  std::lock_guard lock(mu_);
  auto& slot = series_[key];
  if (!slot) {
    const prometheus::Labels base = {{"model", model},
                                     {"protocol", std::string(ProtocolName(protocol))}};
    prometheus::Labels with_code = base;
    with_code["code"] = std::string(StatusCodeName(code));
    slot = std::make_unique<Series>(Series{
        &requests_->Add(with_code),
        &queue_seconds_->Add(base, LatencyBuckets()),
        &compute_seconds_->Add(base, LatencyBuckets()),
        &request_seconds_->Add(base, LatencyBuckets()),
    });
  }
  return *slot;
}

void Metrics::RecordRequest(const std::string& model, Protocol protocol, StatusCode code,
                            const RequestTiming& timing, std::chrono::nanoseconds total) {
  Series& s = SeriesFor(model, protocol, code);
  s.requests->Increment();
  s.total->Observe(Seconds(total));
  if (code == StatusCode::kOk) {
    s.queue->Observe(Seconds(timing.queue));
    s.compute->Observe(Seconds(timing.compute));
  }
}

void Metrics::RecordBatch(const std::string& model, int64_t rows) {
  prometheus::Histogram* h = nullptr;
  {
    std::lock_guard lock(mu_);
    auto& slot = batch_series_[model];
    if (!slot) {
      slot = &batch_rows_->Add({{"model", model}},
                               prometheus::Histogram::BucketBoundaries{
                                   1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024});
    }
    h = slot;
  }
  h->Observe(static_cast<double>(rows));
}

void Metrics::RemoveModel(const std::string& model) {
  std::string prefix = model;
  prefix += '\0';
  std::lock_guard lock(mu_);
  for (auto it = series_.begin(); it != series_.end();) {
    if (!it->first.starts_with(prefix)) {
      ++it;
      continue;
    }
    // Histograms are shared by the series of every code: Remove ignores a
    // metric that is already gone.
    requests_->Remove(it->second->requests);
    queue_seconds_->Remove(it->second->queue);
    compute_seconds_->Remove(it->second->compute);
    request_seconds_->Remove(it->second->total);
    it = series_.erase(it);
  }
  const prometheus::Labels labels = {{"model", model}};
  if (load_seconds_->Has(labels)) load_seconds_->Remove(&load_seconds_->Add(labels, LatencyBuckets()));
  if (load_failures_->Has(labels)) load_failures_->Remove(&load_failures_->Add(labels));
  if (auto it = batch_series_.find(model); it != batch_series_.end()) {
    batch_rows_->Remove(it->second);
    batch_series_.erase(it);
  }
}

void Metrics::RecordStateChange(const ModelStatus& status) {
  if (status.state == ModelState::kUnloaded) {
    RemoveModel(status.name);
  } else if (status.state == ModelState::kReady) {
    load_seconds_->Add({{"model", status.name}}, LatencyBuckets())
        .Observe(Seconds(status.load_duration));
  } else if (status.state == ModelState::kFailed) {
    load_failures_->Add({{"model", status.name}}).Increment();
  }
}

std::string Metrics::Render() const {
  auto families = prom_->Collect();
  auto state = state_->Collect();
  families.insert(families.end(), state.begin(), state.end());
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace pt2serve::server
