#include "server/model_stats.h"

namespace pt2serve::server {
namespace {

void Add(Duration& d, std::chrono::nanoseconds v) {
  ++d.count;
  d.ns += static_cast<uint64_t>(v.count());
}

}  // namespace

void ModelStats::RecordSuccess(const RequestTimes& times, uint64_t batch, int64_t executed_rows,
                               bool counts_execution) {
  const auto now_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  std::lock_guard lock(mu_);
  Add(s_.success, times.total);
  Add(s_.queue, times.queue);
  Add(s_.compute_input, times.input);
  Add(s_.compute_infer, times.infer);
  Add(s_.compute_output, times.output);
  s_.inference_count += batch;
  if (counts_execution) {
    ++s_.execution_count;
    BatchDurations& b = s_.batches[executed_rows];
    Add(b.compute_input, times.input);
    Add(b.compute_infer, times.infer);
    Add(b.compute_output, times.output);
  }
  s_.last_inference_ms = now_ms;
}

void ModelStats::RecordFailure(std::chrono::nanoseconds total) {
  std::lock_guard lock(mu_);
  Add(s_.fail, total);
}

ModelStatsSnapshot ModelStats::Snapshot() const {
  std::lock_guard lock(mu_);
  return s_;
}

std::shared_ptr<ModelStats> StatsTable::Get(const std::string& model) {
  std::lock_guard lock(mu_);
  auto& slot = stats_[model];
  if (!slot) slot = std::make_shared<ModelStats>();
  return slot;
}

void StatsTable::Reset(const std::string& model) {
  std::lock_guard lock(mu_);
  stats_[model] = std::make_shared<ModelStats>();
}

std::shared_ptr<ModelStats> StatsTable::Find(const std::string& model) const {
  std::lock_guard lock(mu_);
  auto it = stats_.find(model);
  return it == stats_.end() ? nullptr : it->second;
}

}  // namespace pt2serve::server
