// InferenceCore: what both front ends (KServe v2 and pt2serve.v1) share.
//
// It looks the model up, runs the request on the model's runner pool (never
// on the gRPC thread), records statistics, metrics and the access log, and
// reports the outcome exactly once. Front ends only convert protos.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "runtime/model.h"
#include "runtime/model_registry.h"
#include "server/metrics.h"
#include "server/model_stats.h"

namespace spdlog {
class logger;
}

namespace pt2serve::server {

// One in-progress request; lets the RPC cancel it while it is still queued.
class PendingCall {
 public:
  // Drops the request if it has not started yet (its outcome is CANCELLED).
  void Cancel();

 private:
  friend class InferenceCore;
  std::mutex mu_;
  bool cancelled_ = false;
  std::shared_ptr<ModelHandle> model_;  // set once queued
  RunnerPool::Ticket ticket_ = 0;
};

// How a front end answers: `encode` turns a successful result into its
// response message (timed as "compute_output"), then `finish` completes the
// RPC with the outcome (encode's error, if it fails: the request then counts
// as failed). Both run on a pool thread, or inline when the request fails
// before it is queued (then only `finish`).
struct Reply {
  // `version`: the model version that computed the result.
  std::function<Status(InferResponse& result, int64_t version)> encode;
  std::function<void(const Status& status)> finish;
};

class InferenceCore {
 public:
  // All references must outlive the core.
  InferenceCore(ModelRegistry& registry, Metrics& metrics, StatsTable& stats,
                bool access_log);

  // Starts `request` on `version` of `model` (kServingVersion: the serving
  // version). `received` is when the RPC arrived and
  // `decode_time` how long decoding its tensors took (for statistics).
  // REQUIRES: `call` is fresh; the caller keeps it to cancel.
  void Start(const std::shared_ptr<PendingCall>& call, Protocol protocol,
             const std::string& model, int64_t version, InferRequest request,
             Clock::time_point received,
             std::chrono::nanoseconds decode_time, Reply reply);

  // Records a request that failed before it reached Start (e.g. undecodable).
  void RecordEarlyFailure(Protocol protocol, const std::string& model, const std::string& id,
                          const Status& status, Clock::time_point received);

 private:
  // Metrics, stats (failures only; successes are recorded by Start) and the
  // access log for one finished request.
  void Record(Protocol protocol, const std::string& model, const std::string& id,
              const Status& status, const RequestTiming& timing, Clock::time_point received,
              ModelStats* stats);
  // The model label for metrics: names the registry does not know share one
  // label, so arbitrary client input cannot create unbounded series.
  std::string MetricLabel(const std::string& model, ModelStats* stats) const;

  ModelRegistry& registry_;
  Metrics& metrics_;
  StatsTable& stats_;
  const bool access_log_;
  std::shared_ptr<spdlog::logger> access_logger_;
};

// Turns a gRPC deadline (system clock) into a runtime Deadline.
Deadline DeadlineFromSystem(std::chrono::system_clock::time_point deadline);

}  // namespace pt2serve::server
