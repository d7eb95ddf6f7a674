#include "runtime/constant_buffer_manager.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <iterator>
#include <new>
#include <unordered_map>
#include <utility>

#include "common/safetensors.h"
#include "common/sha256.h"
#include "devices/device_staging.h"
#include "devices/staging_memory.h"
#include "runtime/model.h"
#include "runtime/push_probe.h"
#include "runtime/replica.h"
#include "runtime/upload_session.h"

namespace pt2serve {
namespace {

using SteadyClock = std::chrono::steady_clock;
using SystemClock = std::chrono::system_clock;

}  // namespace

std::string_view InactiveStateName(InactiveState state) {
  switch (state) {
    case InactiveState::kEmpty: return "EMPTY";
    case InactiveState::kStaged: return "STAGED";
    case InactiveState::kPrevious: return "PREVIOUS";
  }
  return "UNKNOWN";
}

// ---------------------------------------------------------------------------
// WriterSlot

ConstantBufferManager::WriterSlot::WriterSlot(WriterSlot&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)) {}

ConstantBufferManager::WriterSlot& ConstantBufferManager::WriterSlot::operator=(
    WriterSlot&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = std::exchange(other.owner_, nullptr);
  }
  return *this;
}

void ConstantBufferManager::WriterSlot::Release() {
  if (!owner_) return;
  std::lock_guard lock(owner_->mu_);
  owner_->writer_busy_ = false;
  owner_ = nullptr;
}

// ---------------------------------------------------------------------------
// ConstantBufferManager

ConstantBufferManager::ConstantBufferManager(Model& model,
                                             std::shared_ptr<StagingBudget> server_budget)
    : model_(model),
      model_name_(model.config().name),
      weight_bytes_(model.info().constants_nbytes * model.replicas().size()),
      buffer_bytes_((model.info().blob_nbytes + model.info().folded_nbytes) *
                    model.replicas().size()),
      folded_bytes_(model.info().folded_nbytes * model.replicas().size()),
      on_host_(model.info().device.kind == DeviceKind::kCpu),
      staging_devices_(!on_host_ && model.config().isolation == Isolation::kInProcess
                           ? model.device_specs()
                           : std::vector<DeviceSpec>{}),
      copy_file_tensors_(!staging_devices_.empty()),
      staging_budget_(model.config().weights_staging_budget_bytes),
      account_(StagingBudget::Open(server_budget ? server_budget
                                                 : std::make_shared<StagingBudget>(0))) {
  active_.info.version = model.config().initial_weights_version;
  active_.info.source = model.info().path;
  active_.info.updated_at = SystemClock::now();
  active_.folded = true;  // ModelPackage::Load folds the compiled-in constants
  if (staging_devices_.size() == 1 && model.replicas().size() == 1 &&
      HasPinnedStagingMemory(staging_devices_)) {
    device_staging_ = staging_devices_.front();
  }
}

void ConstantBufferManager::DeviceStagingForTest() {
  device_staging_ = model_.device_specs().front();
}

ConstantBufferManager::~ConstantBufferManager() = default;

StatusOr<ConstantBufferManager::WriterSlot> ConstantBufferManager::AcquireWriter() {
  std::lock_guard lock(mu_);
  if (writer_busy_) {
    return FailedPrecondition("another weight operation on model '" + model_name_ +
                              "' is in progress");
  }
  writer_busy_ = true;
  return WriterSlot(this);
}

Status ConstantBufferManager::Stage(const std::vector<Tensor>& tensors,
                                    const StageOptions& options) {
  PT2_ASSIGN_OR_RETURN(WriterSlot slot, AcquireWriter());
  PushProbe probe(model_.device_specs());
  // The caller owns the tensors: no upload buffers of ours.
  Status status = ReserveStaging(0, probe);
  status = status.ok() ? StageHoldingSlot(tensors, options, &probe)
                       : FailStage(std::move(status), false);
  RecordPush(probe, options.version, status.ok());
  return status;
}

Status ConstantBufferManager::StageFromFile(const std::string& safetensors_path,
                                            StageOptions options) {
  PT2_ASSIGN_OR_RETURN(WriterSlot slot, AcquireWriter());
  if (options.source.empty()) options.source = safetensors_path;
  PushProbe probe(model_.device_specs());
  // Host staging copies (copy_file_tensors_, or device staging's ring and
  // its transient device copy), released when the push ends.
  size_t copy_bytes = 0;
  size_t device_bytes = 0;
  auto stage = [&]() -> Status {
    auto file = SafetensorsFile::Open(safetensors_path);
    if (!file.ok()) return FailStage(file.status(), /*buffer_written=*/false);
    if (device_staging_) {
      return StageFileThroughDevice(*file, options, probe, &copy_bytes, &device_bytes);
    }
    // On CPU the file's memory map (page cache) is the staging memory: no
    // upload buffers of ours. Accelerators get (pinned) copies.
    size_t upload_bytes = 0;
    if (copy_file_tensors_) {
      for (const Tensor& t : file->tensors) {
        upload_bytes += StagingFootprint(staging_devices_, t.nbytes);
      }
    }
    if (Status reserved = ReserveStaging(upload_bytes, probe); !reserved.ok()) {
      return FailStage(reserved, false);
    }
    // A malformed checksum is reported by StageHoldingSlot.
    const bool check = Sha256::IsHexDigest(options.sha256);
    std::string actual;
    std::vector<Tensor> tensors = file->tensors;  // alias the mapping
    if (copy_file_tensors_) {
      std::vector<std::byte*> dest;
      copy_bytes = upload_bytes;
      AddUploadBytes(copy_bytes);
      for (Tensor& t : tensors) {
        auto memory = AllocateStagingMemory(staging_devices_, t.nbytes);
        if (!memory.ok()) return FailStage(memory.status(), false);
        probe.pinned = memory->pinned;
        dest.push_back(memory->data);
        t.data = memory->data;
        t.owner = std::move(memory->owner);
      }
      actual = file->CopyTensors(dest, check);
    } else if (check) {
      // The mapping that is staged is the one hashed: no second read of the
      // file, which could also have changed in between.
      actual = Sha256::HexOf(file->bytes, file->size);
    }
    if (check) {
      Status verified = Sha256::Verify(options.sha256, actual, safetensors_path);
      if (!verified.ok()) return FailStage(verified, false);
    }
    return StageHoldingSlot(tensors, options, &probe);
  };
  Status status = stage();
  if (copy_bytes != 0) {  // the copies died with stage()'s tensors
    ReleaseUploadBytes(copy_bytes, device_bytes);
    ReleaseCachedStagingMemory(staging_devices_);
  }
  RecordPush(probe, options.version, status.ok());
  return status;
}

Status ConstantBufferManager::StageFileThroughDevice(const SafetensorsFile& file,
                                                     const StageOptions& options,
                                                     PushProbe& probe, size_t* upload_bytes,
                                                     size_t* device_bytes) {
  // A file that is not a weight set of this package costs no transfer.
  if (Status checked = CheckWeightSet(file.tensors, options); !checked.ok()) {
    return FailStage(checked, false);
  }
  std::vector<size_t> sizes;
  size_t total = 0;
  for (const Tensor& t : file.tensors) {
    sizes.push_back(t.nbytes);
    total += t.nbytes;
  }
  const size_t ring = DeviceStaging::RingBytes(total);
  if (Status reserved = ReserveStaging(ring, probe, total); !reserved.ok()) {
    return FailStage(reserved, false);
  }
  *upload_bytes = ring;
  *device_bytes = total;
  AddUploadBytes(*upload_bytes, *device_bytes);
  auto staging = DeviceStaging::Create(*device_staging_, sizes);
  if (!staging.ok()) return FailStage(staging.status(), false);
  probe.pinned = true;
  probe.device_staged = true;
  const bool check = Sha256::IsHexDigest(options.sha256);
  const auto start = SteadyClock::now();
  // Pieces of the ring's block size go to the device in copies of that size.
  StatusOr<std::string> actual = file.CopyTensors(
      [&](size_t i, size_t offset, const std::byte* src, size_t n) {
        return (*staging)->Copy(i, offset, src, n);
      },
      check, DeviceStaging::kBlockBytes);
  Status arrived = FinishTransfer(**staging, actual.status(), start, probe);
  if (!arrived.ok()) return FailStage(arrived, false);
  if (check) {
    Status verified = Sha256::Verify(options.sha256, *actual, options.source);
    if (!verified.ok()) return FailStage(verified, false);
  }
  std::vector<Tensor> tensors = file.tensors;
  for (size_t i = 0; i < tensors.size(); ++i) TakeDeviceTensor(**staging, i, tensors[i]);
  staging->reset();
  return StageHoldingSlot(tensors, options, &probe);
}

Status ConstantBufferManager::ReserveStaging(size_t upload_bytes, PushProbe& probe,
                                             size_t device_copy_bytes) {
  // A freed buffer is refolded before it is written: its folded results
  // exist twice for a moment (measured: one more F at the push's peak).
  const size_t refold = inactive_needs_refold_ ? folded_bytes_ : 0;
  const size_t needed = upload_bytes + device_copy_bytes + buffer_bytes_ + refold;
  probe.staging = needed;
  std::string what = "weight push to model '" + model_name_ + "' (" +
                     std::to_string(upload_bytes) + " bytes of upload buffers + ";
  if (device_copy_bytes) {
    what += std::to_string(device_copy_bytes) + " bytes of transient copy on the device + ";
  }
  what += std::to_string(buffer_bytes_) + " bytes of inactive constant buffer";
  if (refold) what += " + " + std::to_string(refold) + " bytes to refold it after a free";
  what += ")";
  if (staging_budget_ != 0 && needed > staging_budget_) {
    return ResourceExhausted(what + " needs " + std::to_string(needed) +
                             " bytes of staging memory, over the model's " +
                             kModelStagingBudgetKey + " (" + std::to_string(staging_budget_) +
                             " bytes); nothing was received or changed");
  }
  Status reserved = account_->Reserve(needed, what);
  if (reserved.ok()) return reserved;
  return Status(reserved.code(), reserved.message() + "; nothing was received or changed");
}

void ConstantBufferManager::SyncCharge() {
  std::lock_guard lock(mu_);
  account_->Set(upload_bytes_ + device_upload_bytes_ + (inactive_allocated_ ? buffer_bytes_ : 0));
}

void ConstantBufferManager::AddUploadBytes(size_t bytes, size_t device_bytes) {
  std::lock_guard lock(mu_);
  upload_bytes_ += bytes;
  device_upload_bytes_ += device_bytes;
}

void ConstantBufferManager::ReleaseUploadBytes(size_t bytes, size_t device_bytes) {
  {
    std::lock_guard lock(mu_);
    upload_bytes_ -= std::min(upload_bytes_, bytes);
    device_upload_bytes_ -= std::min(device_upload_bytes_, device_bytes);
  }
  SyncCharge();
}

void ConstantBufferManager::RecordPush(PushProbe& probe, const std::string& version, bool ok) {
  PushMemory m = probe.Finish();
  m.version = version.empty() ? "(none)" : version;
  m.ok = ok;
  m.staging_bytes = probe.staging;
  std::lock_guard lock(mu_);
  last_push_ = std::move(m);
}

BufferMemory ConstantBufferManager::FullBuffer() const {
  BufferMemory m;
  (on_host_ ? m.host_bytes : m.device_bytes) = buffer_bytes_;
  m.folded_bytes = folded_bytes_;
  return m;
}

Status ConstantBufferManager::StageHoldingSlot(const std::vector<Tensor>& tensors,
                                               const StageOptions& options, PushProbe* probe) {
  auto sample = [probe] {
    if (probe) probe->Sample();
  };
  if (Status checked = CheckWeightSet(tensors, options); !checked.ok()) {
    return FailStage(checked, false);
  }


  {
    std::lock_guard lock(mu_);
    inactive_state_ = InactiveState::kEmpty;  // overwritten from here on
    inactive_ = WeightSet{};
    inactive_allocated_ = true;  // allocated on the first write, at full size
  }
  // No RunExclusive: these calls write only the inactive buffer. A fold
  // borrows one of the container's model instances (so it may wait for a
  // running request to finish) and points it at the inactive buffer.
  // Replicas (one per device) are staged one after the other.
  for (size_t k = 0; k < model_.replicas().size(); ++k) {
    const auto& replica = model_.replicas()[k];
    const std::string where = "while staging weights for model '" + model_name_ + "' on " +
                              replica->info().device.ToString();
    // A fold borrows one of the replica's model instances for its whole run,
    // so it takes one of THAT replica's runner slots, as a request would
    // (otherwise an admitted request would wait inside the container). It
    // goes ahead of queued requests and is never refused for a full queue.
    auto fold = [&]() -> Status {
      PT2_RETURN_IF_ERROR(Injected("fold", k).WithPrefix(where));
      return model_.pool()
          .RunPriority(ReplicaRunners(k),
                       [&](size_t) { return replica->FoldConstants(/*inactive=*/true); })
          .WithPrefix(where);
    };
    // After a free, the inactive buffer must be refolded before it is
    // written (see Replica::FreeInactive).
    if (inactive_needs_refold_) {
      Status refolded = fold();
      if (!refolded.ok()) return FailStage(refolded, /*buffer_written=*/true);
    }
    sample();
    Status written = Injected("write", k);
    const auto write_start = SteadyClock::now();
    if (written.ok()) written = replica->WriteInactive(tensors);
    if (probe) {
      probe->write_time += SteadyClock::now() - write_start;
      for (const Tensor& t : tensors) probe->written_bytes += t.nbytes;
    }
    sample();
    if (!written.ok()) return FailStage(written.WithPrefix(where), /*buffer_written=*/true);
    Status folded = fold();
    sample();
    if (!folded.ok()) return FailStage(folded, /*buffer_written=*/true);
  }  // device copies are dropped here, before reporting
  inactive_needs_refold_ = false;
  SyncCharge();

  std::lock_guard lock(mu_);
  inactive_.info.version = options.version;
  inactive_.info.sha256 = Sha256::Lower(options.sha256);
  inactive_.info.source = options.source;
  inactive_.info.updated_at = SystemClock::now();
  inactive_.folded = true;
  inactive_state_ = InactiveState::kStaged;
  return Status::Ok();
}

Status ConstantBufferManager::CheckWeightSet(const std::vector<Tensor>& tensors,
                                             const StageOptions& options) const {
  std::vector<OfferedTensor> offered;
  offered.reserve(tensors.size());
  for (const Tensor& t : tensors) offered.push_back({t.name, t.dtype, &t.shape, t.nbytes});
  const std::vector<std::string> problems =
      WeightSetProblems(model_.info().constants, offered, options);
  return problems.empty() ? Status::Ok() : ProblemsStatus(model_name_, problems);
}

Status ConstantBufferManager::FailStage(Status error, bool buffer_written) {
  bool free_buffer = false;
  {
    std::lock_guard lock(mu_);
    if (buffer_written || inactive_state_ == InactiveState::kStaged) {
      inactive_state_ = InactiveState::kEmpty;
      inactive_ = WeightSet{};
      free_buffer = inactive_allocated_;
    }
  }
  if (free_buffer) {
    Status freed = FreeContainerInactive();
    if (!freed.ok()) {
      SyncCharge();
      return Status(error.code(), error.message() + " (and freeing the inactive buffer failed: " +
                                      freed.ToString() + ")");
    }
  }
  SyncCharge();  // gives back what a refused or failed push reserved
  return error;
}

// Frees every replica's inactive buffer; the next Stage refolds before it
// writes (the AOTInductor work-around behind Replica::FreeInactive).
uint64_t ConstantBufferManager::ReplicaRunners(size_t index) const {
  const size_t replicas = model_.replicas().size();
  const size_t runners = model_.pool().num_runners();
  uint64_t mask = 0;
  for (size_t slot = index; slot < runners; slot += replicas) mask |= uint64_t{1} << slot;
  return mask;
}

Status ConstantBufferManager::Injected(std::string_view op, size_t index) const {
  return fault_hook_ ? fault_hook_(op, index) : Status::Ok();
}

Status ConstantBufferManager::FreeContainerInactive() {
  // Serialized with requests as well as writers, per the AOTI notes: a free
  // that races a swap can free the live buffer.
  Status status = model_.pool().RunExclusive(
      [&]() -> Status {
        for (const auto& replica : model_.replicas()) {
          PT2_RETURN_IF_ERROR(replica->FreeInactive().WithPrefix(
              "freeing the inactive weights of model '" + model_name_ + "'"));
        }
        inactive_needs_refold_ = true;
        return Status::Ok();
      },
      SteadyClock::now() + drain_timeout_);
  if (status.ok()) {
    std::lock_guard lock(mu_);
    inactive_allocated_ = false;
  }
  return status;
}

StatusOr<SwapResult> ConstantBufferManager::Swap(std::string_view expected_version,
                                                 std::string_view expected_active) {
  PT2_ASSIGN_OR_RETURN(WriterSlot slot, AcquireWriter());
  {
    std::lock_guard lock(mu_);
    if (!expected_version.empty() && active_.info.version == expected_version) {
      SwapResult result;
      result.already_active = true;
      result.active_version = active_.info.version;
      if (inactive_state_ == InactiveState::kPrevious) {
        result.previous_version = inactive_.info.version;
      }
      return result;
    }
    if (!expected_active.empty() && active_.info.version != expected_active) {
      return FailedPrecondition("model '" + model_name_ + "' has version '" +
                                active_.info.version + "' active, expected '" +
                                std::string(expected_active) + "'");
    }
    if (inactive_state_ == InactiveState::kPrevious) {
      return FailedPrecondition("no weights are staged for model '" + model_name_ +
                                "' (the inactive buffer holds the previous weights '" +
                                inactive_.info.version + "'; Rollback restores them)");
    }
    if (inactive_state_ != InactiveState::kStaged) {
      return FailedPrecondition("no weights are staged for model '" + model_name_ + "'");
    }
    if (!expected_version.empty() && inactive_.info.version != expected_version) {
      return FailedPrecondition("model '" + model_name_ + "' has version '" +
                                inactive_.info.version + "' staged, not '" +
                                std::string(expected_version) + "'");
    }
  }
  return SwapHoldingSlot();
}

StatusOr<SwapResult> ConstantBufferManager::Rollback() {
  PT2_ASSIGN_OR_RETURN(WriterSlot slot, AcquireWriter());
  {
    std::lock_guard lock(mu_);
    if (inactive_state_ == InactiveState::kStaged) {
      return FailedPrecondition("no previous weights retained for model '" + model_name_ +
                                "': the inactive buffer holds the staged weights '" +
                                inactive_.info.version + "' (staging replaces them)");
    }
    if (inactive_state_ != InactiveState::kPrevious) {
      return FailedPrecondition("no previous weights retained for model '" + model_name_ +
                                "': nothing was swapped in, or the inactive buffer was freed");
    }
  }
  return SwapHoldingSlot();
}

StatusOr<SwapResult> ConstantBufferManager::SwapHoldingSlot() {
  std::string to_version, from_version;
  bool fold_after = false;
  {
    std::lock_guard lock(mu_);
    to_version = inactive_.info.version;
    from_version = active_.info.version;
    fold_after = !inactive_.folded;
  }
  const auto called = SteadyClock::now();
  SteadyClock::time_point entered, left;
  // On an accelerator, requests that ran on the old buffer have copied their
  // outputs to the host (Model::Execute) before releasing their runner, which
  // waits for their kernels: nothing reads the buffer once it is inactive.
  Status status = model_.pool().RunExclusive([&]() -> Status {
    entered = SteadyClock::now();
    // Every replica swaps inside the same exclusive section: no request sees
    // one device on the new weights and another on the old. All or nothing:
    // when replica k fails, replicas 0..k-1 are swapped back, so the model
    // keeps serving the old weights everywhere under the old label.
    const auto& replicas = model_.replicas();
    for (size_t k = 0; k < replicas.size(); ++k) {
      Status swapped = Injected("swap", k);
      if (swapped.ok()) swapped = replicas[k]->SwapBuffers();
      if (swapped.ok()) continue;
      swapped = swapped.WithPrefix("model '" + model_name_ + "' on " +
                                   replicas[k]->info().device.ToString());
      for (size_t j = k; j-- > 0;) {
        Status back = Injected("swap_back", j);
        if (back.ok()) back = replicas[j]->SwapBuffers();
        if (!back.ok()) {
          return Internal(swapped.message() + "; swapping " +
                          replicas[j]->info().device.ToString() +
                          " back failed too (" + back.message() +
                          "): its replicas now serve different weights; reload the model");
        }
      }
      return swapped;
    }
    model_.SetWeightsVersionLocked(to_version);
    if (fold_after) {
      // Only the compiled-in set may be unfolded (no request ran before the
      // first swap). Fold it here, while requests are paused anyway; on
      // failure the first request folds it instead.
      for (const auto& replica : model_.replicas()) {
        if (!replica->FoldConstants(/*inactive=*/false).ok()) fold_after = false;
      }
    }
    left = SteadyClock::now();
    return Status::Ok();
  }, called + drain_timeout_);
  if (status.code() == StatusCode::kDeadlineExceeded) {
    return DeadlineExceeded("swap of model '" + model_name_ + "' to '" + to_version +
                            "' did not start within " + std::to_string(drain_timeout_.count()) +
                            " ms: " + status.message() + " (still serving '" + from_version +
                            "'; the staged weights are kept, retry the swap)");
  }
  if (!status.ok()) return status;

  std::lock_guard lock(mu_);
  std::swap(active_, inactive_);
  inactive_state_ = InactiveState::kPrevious;
  const auto now = SystemClock::now();
  active_.info.updated_at = now;
  inactive_.info.updated_at = now;
  if (fold_after) active_.folded = true;
  SwapResult result;
  result.active_version = std::move(to_version);
  result.previous_version = std::move(from_version);
  result.swap_time = left - entered;
  result.wait_time = entered - called;
  return result;
}

StatusOr<size_t> ConstantBufferManager::FreeInactive() {
  PT2_ASSIGN_OR_RETURN(WriterSlot slot, AcquireWriter());
  {
    std::lock_guard lock(mu_);
    if (!inactive_allocated_) return size_t{0};
    // No rollback into a buffer that may be half freed, even if freeing fails.
    inactive_state_ = InactiveState::kEmpty;
    inactive_ = WeightSet{};
  }
  Status freed = FreeContainerInactive();
  SyncCharge();
  PT2_RETURN_IF_ERROR(freed);
  return weight_bytes_;
}

BufferStatus ConstantBufferManager::status() const {
  std::lock_guard lock(mu_);
  BufferStatus s;
  s.active = active_.info;
  s.active.bytes = weight_bytes_;
  s.inactive_state = inactive_state_;
  s.inactive = inactive_.info;
  s.inactive.bytes = inactive_allocated_ ? weight_bytes_ : 0;
  s.bytes_in_use = s.active.bytes + s.inactive.bytes;
  s.active_memory = FullBuffer();
  if (inactive_allocated_) s.inactive_memory = FullBuffer();
  s.upload_bytes = upload_bytes_;
  s.device_upload_bytes = device_upload_bytes_;
  s.staging_bytes = account_->charge();
  s.staging_budget = staging_budget_;
  s.last_push = last_push_;
  return s;
}

StatusOr<std::unique_ptr<UploadSession>> ConstantBufferManager::BeginUpload(
    std::vector<TensorSpec> tensors, StageOptions options) {
  PT2_ASSIGN_OR_RETURN(WriterSlot slot, AcquireWriter());
  std::vector<OfferedTensor> offered;
  offered.reserve(tensors.size());
  for (const TensorSpec& t : tensors) {
    offered.push_back({t.name, t.dtype, &t.shape, std::nullopt});
  }
  const std::vector<std::string> problems =
      WeightSetProblems(model_.info().constants, offered, options);
  auto probe = std::make_unique<PushProbe>(model_.device_specs());
  // Refused pushes are recorded too (last_push says what they asked for).
  auto refuse = [&](Status error) -> Status {
    Status failed = FailStage(std::move(error), false);
    RecordPush(*probe, options.version, false);
    return failed;
  };
  if (!problems.empty()) return refuse(ProblemsStatus(model_name_, problems));

  std::map<std::string_view, size_t> nbytes;
  for (const ConstantInfo& c : model_.info().constants) nbytes[c.fqn] = c.nbytes;
  // With device staging the chunks land in ordinary host memory (pinning a
  // whole set costs about what it saves) and go on through the pinned ring.
  const std::vector<DeviceSpec> part_devices =
      device_staging_ ? std::vector<DeviceSpec>{} : staging_devices_;
  size_t upload_bytes = 0;  // what the buffers will hold (pinned blocks round up)
  size_t device_copy_bytes = 0;
  std::vector<size_t> sizes;
  for (const TensorSpec& t : tensors) {
    sizes.push_back(nbytes.at(t.name));
    upload_bytes += StagingFootprint(part_devices, sizes.back());
    if (device_staging_) device_copy_bytes += sizes.back();
  }
  if (device_staging_) upload_bytes += DeviceStaging::RingBytes(device_copy_bytes);
  if (Status reserved = ReserveStaging(upload_bytes, *probe, device_copy_bytes); !reserved.ok()) {
    return refuse(reserved);
  }
  std::unique_ptr<DeviceStaging> device;
  if (device_staging_) {
    auto created = DeviceStaging::Create(*device_staging_, sizes);
    if (!created.ok()) return refuse(created.status());
    device = std::move(*created);
    probe->pinned = true;
    probe->device_staged = true;
  }
  std::vector<UploadSession::Part> parts(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    parts[i].nbytes = sizes[i];
    auto memory = AllocateStagingMemory(part_devices, parts[i].nbytes);
    if (!memory.ok()) {
      parts.clear();
      ReleaseCachedStagingMemory(staging_devices_);
      return refuse(memory.status().WithPrefix("upload of '" + tensors[i].name + "'"));
    }
    if (!device) probe->pinned = memory->pinned;
    parts[i].memory = std::move(*memory);
  }
  AddUploadBytes(upload_bytes, device_copy_bytes);
  auto session = std::unique_ptr<UploadSession>(
      new UploadSession(*this, std::move(slot), std::move(tensors), std::move(parts),
                        upload_bytes, std::move(options), std::move(probe)));
  if (device) session->AttachDeviceStaging(std::move(device), device_copy_bytes);
  return session;
}

}  // namespace pt2serve
