#include "server/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <exception>

#include "devices/device_memory.h"
#include "server/metrics_http_server.h"

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
    }
    auto memory = Family("pt2serve_device_memory_bytes",
                         "Accelerator memory held by the caching allocator, by device",
                         MetricType::Gauge);
    for (const DeviceMemory& m : QueryDeviceMemory()) {
      memory.metric.push_back(Gauge({{"device", m.device}, {"kind", "allocated"}}, m.allocated));
      memory.metric.push_back(Gauge({{"device", m.device}, {"kind", "reserved"}}, m.reserved));
    }
    return {state, in_flight, queued, runners, version, rejected, expired, restarts, memory};
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

Metrics::~Metrics() { http_.reset(); }  // stop serving before the registry goes

StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& address,
                                                   const ModelRegistry& registry) {
  std::unique_ptr<Metrics> metrics(new Metrics(registry));
  if (!address.empty()) {
    PT2_ASSIGN_OR_RETURN(metrics->http_,
                         MetricsHttpServer::Start(address, [m = metrics.get()] { return m->Render(); }));
  }
  return metrics;
}

int Metrics::port() const { return http_ ? http_->port() : 0; }

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

void Metrics::RecordStateChange(const ModelStatus& status) {
  if (status.state == ModelState::kReady) {
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
