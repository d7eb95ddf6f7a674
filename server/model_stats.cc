#include "server/model_stats.h"

namespace pt2serve::server {

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
