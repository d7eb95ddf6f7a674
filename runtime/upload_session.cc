#include "runtime/upload_session.h"

#include <chrono>
#include <cstring>
#include <iterator>
#include <mutex>
#include <utility>

#include <oneapi/tbb/task_group.h>

#include "common/sha256.h"
#include "devices/device_staging.h"
#include "runtime/push_probe.h"

namespace pt2serve {
namespace {

std::string Quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

}  // namespace

// Device staging of an upload: each tensor is copied to the device by a
// oneTBB task as soon as its last chunk arrived, while the next tensors are
// received. The tasks only read their part (written once, complete).
struct UploadSession::DeviceCopies {
  std::unique_ptr<DeviceStaging> staging;
  oneapi::tbb::task_group tasks;
  std::mutex mu;
  Status error;  // the first failed copy; guarded by mu
};

UploadSession::UploadSession(ConstantBufferManager& manager,
                             ConstantBufferManager::WriterSlot slot,
                             std::vector<TensorSpec> specs, std::vector<Part> parts,
                             size_t held_bytes, StageOptions options,
                             std::unique_ptr<PushProbe> probe)
    : manager_(manager),
      slot_(std::move(slot)),
      probe_(std::move(probe)),
      specs_(std::move(specs)),
      parts_(std::move(parts)),
      held_bytes_(held_bytes),
      options_(std::move(options)) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    index_.emplace(specs_[i].name, i);
    bytes_expected_ += parts_[i].nbytes;
  }
}

// An abandoned upload wrote nothing to the container: releasing its buffers
// (and then slot_, a member) is all it needs.
UploadSession::~UploadSession() { Finish(false); }

void UploadSession::Finish(bool ok) {
  if (finished_) return;
  finished_ = true;
  // The helper may still be hashing an abandoned upload's buffers (a client
  // that went away mid-stream): it must let go of them before they are freed.
  hasher_.Abandon();
  if (device_) device_->tasks.wait();  // its copies read the parts
  device_.reset();
  parts_.clear();
  ReleaseCachedStagingMemory(manager_.staging_devices_);
  manager_.ReleaseUploadBytes(held_bytes_, held_device_bytes_);
  manager_.RecordPush(*probe_, options_.version, ok);
}

Status UploadSession::Write(std::string_view name, uint64_t offset, const void* data,
                            size_t size) {
  return Write(name, offset, size, [&](std::byte* dest) {
    std::memcpy(dest, data, size);
    return true;
  });
}

Status UploadSession::Write(std::string_view name, uint64_t offset, size_t size,
                            const std::function<bool(std::byte* dest)>& fill) {
  if (committed_) return FailedPrecondition("upload already committed");
  auto found = index_.find(name);
  if (found == index_.end()) {
    return InvalidArgument("upload: tensor " + Quoted(name) + " was not announced");
  }
  Part& part = parts_[found->second];
  if (offset > part.nbytes || size > part.nbytes - offset) {
    return InvalidArgument("upload: chunk [" + std::to_string(offset) + ", " +
                           std::to_string(offset + size) + ") is outside tensor " +
                           Quoted(name) + " (" + std::to_string(part.nbytes) + " bytes)");
  }
  if (size == 0) return Status::Ok();
  const uint64_t end = offset + size;
  // First range starting after `offset`, and the one before it.
  auto next = part.written.upper_bound(offset);
  auto prev = next == part.written.begin() ? part.written.end() : std::prev(next);
  if ((prev != part.written.end() && prev->second > offset) ||
      (next != part.written.end() && next->first < end)) {
    return InvalidArgument("upload: bytes [" + std::to_string(offset) + ", " +
                           std::to_string(end) + ") of tensor " + Quoted(name) +
                           " were already written");
  }
  std::byte* dest = part.memory.data + offset;
  if (!fill(dest)) {
    return InvalidArgument("upload: chunk data for bytes [" + std::to_string(offset) + ", " +
                           std::to_string(end) + ") of tensor " + Quoted(name) + " is truncated");
  }
  // The staged copy is written once and outlives the hasher: hash it there.
  if (!options_.sha256.empty() || options_.sha256_follows) hasher_.Update(dest, size);
  part.received += size;
  bytes_received_ += size;
  if (device_ && part.received == part.nbytes) CopyPartToDevice(found->second);
  // Record [offset, end), merged with touching neighbours.
  uint64_t begin = offset, stop = end;
  if (prev != part.written.end() && prev->second == offset) {
    begin = prev->first;
    part.written.erase(prev);
  }
  if (next != part.written.end() && next->first == end) {
    stop = next->second;
    part.written.erase(next);
  }
  part.written[begin] = stop;
  return Status::Ok();
}

Status UploadSession::ExpectSha256(std::string sha256) {
  if (!options_.sha256.empty()) return InvalidArgument("upload: sha256 given twice");
  if (!options_.sha256_follows) {
    return InvalidArgument("upload: no sha256 was announced to follow the data");
  }
  if (!Sha256::IsHexDigest(sha256)) {
    return InvalidArgument("upload: sha256 " + Quoted(sha256) + " is not 64 hex digits");
  }
  // From here on the options read as if the sha256 had come up front.
  options_.sha256 = std::move(sha256);
  options_.sha256_follows = false;
  return Status::Ok();
}

Status UploadSession::Commit() {
  if (committed_) return FailedPrecondition("upload already committed");
  committed_ = true;
  // Released when Commit returns, whatever happens.
  ConstantBufferManager::WriterSlot slot = std::move(slot_);

  std::vector<std::string> incomplete;
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (parts_[i].received != parts_[i].nbytes) {
      incomplete.push_back(Quoted(specs_[i].name) + " has " +
                           std::to_string(parts_[i].received) + " of " +
                           std::to_string(parts_[i].nbytes) + " bytes");
    }
  }
  auto fail = [&](Status error) {
    Status failed = manager_.FailStage(std::move(error), false);
    Finish(false);
    return failed;
  };
  if (!incomplete.empty()) {
    std::string msg = "incomplete upload for model '" + manager_.model_name_ + "': ";
    for (size_t i = 0; i < incomplete.size() && i < kMaxListedProblems; ++i) {
      if (i) msg += "; ";
      msg += incomplete[i];
    }
    if (incomplete.size() > kMaxListedProblems) {
      msg += "; ... and " + std::to_string(incomplete.size() - kMaxListedProblems) + " more";
    }
    return fail(InvalidArgument(std::move(msg)));
  }
  if (options_.sha256_follows && options_.sha256.empty()) {
    return fail(InvalidArgument("upload: the sha256 announced to follow the data never came"));
  }
  if (!options_.sha256.empty()) {
    const std::string actual = hasher_.FinishHex();
    if (Status verified = Sha256::Verify(options_.sha256, actual); !verified.ok()) {
      return fail(verified);
    }
  }

  if (device_) {  // the set goes on from its transient copy on the device
    const auto start = std::chrono::steady_clock::now();
    device_->tasks.wait();
    Status arrived = FinishTransfer(*device_->staging, device_->error, start, *probe_);
    if (!arrived.ok()) return fail(arrived);
  }
  // Hand the set over without copying (the transient device copy, or the
  // upload buffers); it is freed when Stage's tensors (and anything LibTorch
  // made from them) are gone.
  Status staged;
  {
    std::vector<Tensor> tensors(specs_.size());
    for (size_t i = 0; i < specs_.size(); ++i) {
      Tensor& t = tensors[i];
      t.name = specs_[i].name;
      t.dtype = specs_[i].dtype;
      t.shape = specs_[i].shape;
      t.nbytes = parts_[i].nbytes;
      if (device_) {
        TakeDeviceTensor(*device_->staging, i, t);
      } else {
        t.data = parts_[i].memory.data;
        t.owner = std::move(parts_[i].memory.owner);
      }
    }
    device_.reset();
    parts_.clear();  // with device staging the host copy is not needed any more
    staged = manager_.StageHoldingSlot(tensors, options_, probe_.get());
  }  // the set is freed here
  Finish(staged.ok());
  return staged;
}

void UploadSession::AttachDeviceStaging(std::unique_ptr<DeviceStaging> staging,
                                        size_t device_bytes) {
  held_device_bytes_ = device_bytes;
  device_ = std::make_unique<DeviceCopies>();
  device_->staging = std::move(staging);
}

void UploadSession::CopyPartToDevice(size_t i) {
  DeviceCopies* device = device_.get();
  const Part& part = parts_[i];
  device->tasks.run([device, i, data = part.memory.data, n = part.nbytes] {
    Status copied = device->staging->Copy(i, 0, data, n);
    if (!copied.ok()) {
      std::lock_guard lock(device->mu);
      if (device->error.ok()) device->error = std::move(copied);
    }
  });
}

}  // namespace pt2serve
