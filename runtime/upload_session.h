// UploadSession: a weight set arriving in chunks (a client-streaming upload)
// on its way into a model's inactive constant buffer. Made by
// ConstantBufferManager::BeginUpload (runtime/constant_buffer_manager.h),
// which owns the state machine and the budgets; this file is the session's
// side: chunk bookkeeping, the checksum, and the hand-over to staging.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/background_sha256.h"
#include "common/status.h"
#include "devices/staging_memory.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/weight_set_check.h"  // TensorSpec, StageOptions

namespace pt2serve {

class DeviceStaging;
class PushProbe;

// A weight set arriving in chunks (a client-streaming upload). Made by
// ConstantBufferManager::BeginUpload, which has already checked the announced
// tensors and allocated one host buffer for each; Write() copies chunks
// straight into them and Commit() hands them to Stage without another copy.
//
// Holds the model's writer slot from BeginUpload until Commit returns or the
// session is destroyed. Destroying an uncommitted session (the client went
// away mid-stream) stages nothing and leaves weights and buffers as they were.
//
// Thread-safety: not thread-safe; one stream feeds a session, one call at a
// time. REQUIRES: destroyed before its Model.
class UploadSession {
 public:
  ~UploadSession();
  UploadSession(const UploadSession&) = delete;
  UploadSession& operator=(const UploadSession&) = delete;

  // Copies `size` bytes into tensor `name` at byte `offset`. Chunks may come
  // in any order, but every byte exactly once. INVALID_ARGUMENT, with nothing
  // recorded, for an unannounced name, a range outside the tensor, or bytes
  // already written; FAILED_PRECONDITION once Commit() was called.
  Status Write(std::string_view name, uint64_t offset, const void* data, size_t size);
  // The same, but `fill` writes the `size` bytes straight into the staging
  // buffer at `dest` (e.g. from the network), saving a copy. `fill` runs
  // only after the checks pass; when it returns false the chunk counts as not
  // written (INVALID_ARGUMENT "chunk data ... truncated").
  Status Write(std::string_view name, uint64_t offset, size_t size,
               const std::function<bool(std::byte* dest)>& fill);

  // Gives the SHA-256 announced as following the data (options.sha256_follows).
  // INVALID_ARGUMENT if none was announced, one was already given, or `sha256`
  // is not 64 hex digits.
  Status ExpectSha256(std::string sha256);

  // Checks that every byte of every tensor arrived (INVALID_ARGUMENT naming
  // the incomplete tensors), then the checksum when options.sha256 was given
  // (DATA_LOSS "checksum mismatch: expected X, got Y", over the chunks in
  // arrival order; hashed by a helper thread while the chunks arrived, so
  // Commit only waits for the last ones), then stages the set as Stage()
  // does. With options.sha256_follows and no ExpectSha256 call,
  // INVALID_ARGUMENT. One-shot: the
  // session is finished afterwards whatever the outcome, and its writer slot
  // is released.
  Status Commit();

  const std::vector<TensorSpec>& tensors() const { return specs_; }
  uint64_t bytes_expected() const { return bytes_expected_; }
  uint64_t bytes_received() const { return bytes_received_; }

 private:
  friend class ConstantBufferManager;
  struct Part {
    size_t nbytes = 0;
    StagingMemory memory;  // nbytes, pinned for in-process accelerator models
    // Written byte ranges [begin, end), disjoint and merged when adjacent.
    std::map<uint64_t, uint64_t> written;
    uint64_t received = 0;
  };

  UploadSession(ConstantBufferManager& manager, ConstantBufferManager::WriterSlot slot,
                std::vector<TensorSpec> specs, std::vector<Part> parts, size_t held_bytes,
                StageOptions options, std::unique_ptr<PushProbe> probe);

  // Releases the upload buffers and records the push (once).
  void Finish(bool ok);
  // Device staging (BeginUpload): each part goes on to the device through
  // `staging` as soon as it is complete; `device_bytes` is its transient
  // device copy (charged as upload bytes until Finish).
  void AttachDeviceStaging(std::unique_ptr<DeviceStaging> staging, size_t device_bytes);
  // Device staging: part `i` is complete; queue its copy to the device.
  void CopyPartToDevice(size_t i);

  struct DeviceCopies;  // parts on their way to the device (device staging)

  ConstantBufferManager& manager_;
  ConstantBufferManager::WriterSlot slot_;  // empty once committed
  std::unique_ptr<PushProbe> probe_;        // measures the push until Finish
  bool finished_ = false;
  const std::vector<TensorSpec> specs_;
  std::vector<Part> parts_;  // parallel to specs_
  const size_t held_bytes_;  // host memory the parts hold (charged as upload bytes)
  size_t held_device_bytes_ = 0;  // the transient device copy (device staging)
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in specs_
  StageOptions options_;
  // Fed (with views of parts_' buffers, written once) when a checksum is
  // expected. Declared after parts_: destroyed, and its thread joined, first.
  BackgroundSha256 hasher_;
  // Set with device staging. Its copies read parts_: Finish() waits for them
  // before the parts are freed.
  std::unique_ptr<DeviceCopies> device_;
  uint64_t bytes_expected_ = 0;
  uint64_t bytes_received_ = 0;
  bool committed_ = false;
};

}  // namespace pt2serve
