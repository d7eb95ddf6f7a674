#include "runtime/push_probe.h"

#include <algorithm>
#include <utility>

#include "devices/device_memory.h"

namespace pt2serve {

PushProbe::PushProbe(std::vector<DeviceSpec> devices) : devices_(std::move(devices)) {
  before_ = DeviceUsed();
  peak_ = before_;
}

void PushProbe::Sample() {
  window_.Sample();
  peak_ = std::max(peak_, DeviceUsed());
}

PushMemory PushProbe::Finish() {
  using std::chrono::duration_cast;
  using std::chrono::microseconds;
  Sample();
  PushMemory m;
  m.process_rss_before = window_.rss_before();
  m.process_peak_rss = window_.Finish();
  m.device_used_before = before_;
  m.device_peak_used = peak_;
  m.write_time = duration_cast<microseconds>(write_time);
  m.written_bytes = written_bytes;
  m.pinned_staging = pinned;
  m.device_staged = device_staged;
  m.transfer_time = duration_cast<microseconds>(transfer_time);
  m.device_copy_bytes = device_copies.bytes;
  m.device_copy_busy = duration_cast<microseconds>(device_copies.busy);
  m.finished_at = std::chrono::system_clock::now();
  return m;
}

size_t PushProbe::DeviceUsed() const {
  size_t sum = 0;
  for (const DeviceSpec& d : devices_) sum += DeviceBytesInUse(d).value_or(0);
  return sum;
}

Status FinishTransfer(DeviceStaging& staging, Status status,
                      std::chrono::steady_clock::time_point start, PushProbe& probe) {
  if (status.ok()) status = staging.Finish();
  probe.transfer_time += std::chrono::steady_clock::now() - start;
  if (status.ok()) probe.device_copies = staging.Stats();
  probe.Sample();
  return status;
}

void TakeDeviceTensor(DeviceStaging& staging, size_t i, Tensor& t) {
  t.owner = staging.TakeTensor(i, &t.data);
  t.on_device = true;
}

}  // namespace pt2serve
