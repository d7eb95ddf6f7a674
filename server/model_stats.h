// Per-model request statistics in the shape of KServe/Triton ModelStatistics
// (what perf_analyzer reads to split server time into queue/input/infer/output).
//
// A successful request adds to success, queue and all three compute
// durations in one step, so a snapshot always has equal counts for them
// (perf_analyzer checks that). Failed requests add to `fail` only.
//
// Thread-safety: StatsTable and ModelStats may be used from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace pt2serve::server {

struct Duration {
  uint64_t count = 0;
  uint64_t ns = 0;
};

// Times of the container calls of one batch size (KServe batch_stats).
struct BatchDurations {
  Duration compute_input, compute_infer, compute_output;
};

struct ModelStatsSnapshot {
  Duration success, fail, queue, compute_input, compute_infer, compute_output;
  // By rows per container call; one count per call (a formed batch counts
  // once, not once per request in it).
  std::map<int64_t, BatchDurations> batches;
  uint64_t inference_count = 0;    // samples (batch elements)
  uint64_t execution_count = 0;    // model executions
  uint64_t last_inference_ms = 0;  // ms since the Unix epoch
};

// Times of one successful request.
struct RequestTimes {
  std::chrono::nanoseconds total{0}, queue{0}, input{0}, infer{0}, output{0};
};

class ModelStats {
 public:
  // `batch`: the request's rows. `executed_rows` and `counts_execution`
  // come from InferResponse (batch_rows / counts_execution).
  void RecordSuccess(const RequestTimes& times, uint64_t batch, int64_t executed_rows,
                     bool counts_execution);
  void RecordFailure(std::chrono::nanoseconds total);
  ModelStatsSnapshot Snapshot() const;

 private:
  mutable std::mutex mu_;
  ModelStatsSnapshot s_;  // guarded by mu_
};

class StatsTable {
 public:
  // The stats of `model`, created on first use.
  std::shared_ptr<ModelStats> Get(const std::string& model);
  // Starts `model` afresh (called when a model is (re)loaded).
  void Reset(const std::string& model);
  // Null when the model never had stats.
  std::shared_ptr<ModelStats> Find(const std::string& model) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<ModelStats>> stats_;  // guarded by mu_
};

}  // namespace pt2serve::server
