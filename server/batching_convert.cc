#include "server/batching_convert.h"

#include <algorithm>

namespace pt2serve::server {
namespace {

// Negative values (possible in YAML and proto) become 0 or SIZE_MAX, which
// Model::Load then refuses by name; they are never silently valid.
uint32_t Level(int64_t v) {
  return v < 0 ? UINT32_MAX : static_cast<uint32_t>(std::min<int64_t>(v, UINT32_MAX));
}

std::vector<size_t> QueueSizes(const std::vector<int64_t>& sizes) {
  std::vector<size_t> out;
  for (int64_t v : sizes) out.push_back(static_cast<size_t>(std::max<int64_t>(v, 0)));
  return out;
}

}  // namespace

BatchingConfig BatchingFromEntry(const BatchingEntry& e) {
  BatchingConfig b;
  b.enabled = true;
  b.max_batch_size = e.max_batch_size;
  b.max_queue_delay = std::chrono::microseconds(e.max_queue_delay_us);
  b.preferred_batch_sizes = e.preferred_batch_sizes;
  b.preserve_ordering = e.preserve_ordering;
  b.priority_levels = Level(e.priority_levels);
  b.default_priority_level = Level(e.default_priority_level);
  b.priority_queue_sizes = QueueSizes(e.priority_queue_sizes);
  return b;
}

BatchingConfig BatchingFromProto(const pt2serve::v1::DynamicBatching& p) {
  BatchingEntry e;
  e.max_batch_size = p.max_batch_size();
  e.max_queue_delay_us = p.max_queue_delay_us();
  e.preferred_batch_sizes.assign(p.preferred_batch_sizes().begin(),
                                 p.preferred_batch_sizes().end());
  e.preserve_ordering = p.preserve_ordering();
  e.priority_levels = p.priority_levels();
  e.default_priority_level = p.default_priority_level();
  e.priority_queue_sizes.assign(p.priority_queue_sizes().begin(),
                                p.priority_queue_sizes().end());
  return BatchingFromEntry(e);
}

void BatchingToProto(const BatcherOptions& o, pt2serve::v1::DynamicBatching* p) {
  p->set_max_batch_size(o.max_batch_size);
  p->set_max_queue_delay_us(o.max_queue_delay.count());
  for (int64_t size : o.preferred_batch_sizes) p->add_preferred_batch_sizes(size);
  p->set_preserve_ordering(o.preserve_ordering);
  p->set_priority_levels(o.priority_levels > 1 ? static_cast<int32_t>(o.priority_levels) : 0);
  p->set_default_priority_level(static_cast<int32_t>(o.default_priority_level));
  for (size_t size : o.max_queue_size) p->add_priority_queue_sizes(static_cast<int64_t>(size));
}

}  // namespace pt2serve::server
