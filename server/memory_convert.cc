#include "server/memory_convert.h"

#include "common/process_memory.h"

namespace pt2serve::server {
namespace {

void BufferToProto(const BufferMemory& m, pt2serve::v1::BufferMemory* proto) {
  proto->set_host_bytes(m.host_bytes);
  proto->set_device_bytes(m.device_bytes);
  proto->set_folded_bytes(m.folded_bytes);
}

}  // namespace

void PushMemoryToProto(const PushMemory& push, pt2serve::v1::PushMemory* proto) {
  proto->set_version(push.version);
  if (push.version.empty()) return;  // no push yet
  proto->set_ok(push.ok);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      push.finished_at.time_since_epoch())
                      .count();
  proto->mutable_finished_at()->set_seconds(ns / 1'000'000'000);
  proto->mutable_finished_at()->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  proto->set_staging_bytes(push.staging_bytes);
  proto->set_process_rss_before_bytes(push.process_rss_before);
  proto->set_process_peak_rss_bytes(push.process_peak_rss);
  proto->set_device_used_before_bytes(push.device_used_before);
  proto->set_device_peak_used_bytes(push.device_peak_used);
}

void WeightsMemoryToProto(const BufferStatus& status, const StagingBudget* server_budget,
                          pt2serve::v1::WeightsMemory* proto) {
  BufferToProto(status.active_memory, proto->mutable_active());
  BufferToProto(status.inactive_memory, proto->mutable_inactive());
  proto->set_upload_bytes(status.upload_bytes);
  proto->set_device_upload_bytes(status.device_upload_bytes);
  proto->set_staging_bytes(status.staging_bytes);
  proto->set_staging_budget_bytes(status.staging_budget);
  if (server_budget) {
    proto->set_server_staging_bytes(server_budget->in_use());
    proto->set_server_staging_budget_bytes(server_budget->limit());
  }
  const ProcessMemory process = ReadProcessMemory();
  proto->set_process_rss_bytes(process.rss_bytes);
  proto->set_process_peak_rss_bytes(process.peak_rss_bytes);
  PushMemoryToProto(status.last_push, proto->mutable_last_push());
}

}  // namespace pt2serve::server
