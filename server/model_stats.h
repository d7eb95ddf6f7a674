// Per-model request statistics in the shape of KServe/Triton ModelStatistics
// (what perf_analyzer reads to split server time into queue/input/infer/output).
//
// Thread-safety: StatsTable and ModelStats may be used from any thread;
// counters are atomics, so recording takes no lock.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace pt2serve::server {

struct Duration {
  std::atomic<uint64_t> count{0};
  std::atomic<uint64_t> ns{0};
  void Add(std::chrono::nanoseconds d) {
    count.fetch_add(1, std::memory_order_relaxed);
    ns.fetch_add(static_cast<uint64_t>(d.count()), std::memory_order_relaxed);
  }
};

struct ModelStats {
  Duration success;         // whole request, successful ones
  Duration fail;            // whole request, failed ones
  Duration queue;           // waiting for a runner
  Duration compute_input;   // decoding the request's tensors
  Duration compute_infer;   // inside the runner (incl. device copies)
  Duration compute_output;  // encoding the response
  std::atomic<uint64_t> inference_count{0};  // samples (batch elements)
  std::atomic<uint64_t> execution_count{0};  // model executions
  std::atomic<uint64_t> last_inference_ms{0};  // ms since the Unix epoch
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
