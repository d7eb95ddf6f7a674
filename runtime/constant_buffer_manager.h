// ConstantBufferManager: hot-swaps the weights of one loaded model.
//
// An AOTInductor container keeps two constant buffers: run() reads the ACTIVE
// one, the INACTIVE one can be written while requests run and then swapped
// in. This class is the operator's view of that pair; the gRPC admin service
// is a thin layer over it.
//
//   Stage / StageFromFile / BeginUpload..Commit
//                  validate a complete weight set against the package and
//                  write it into the INACTIVE buffer (then constant-fold it
//                  there) while requests keep running on the ACTIVE one.
//   Swap           make the staged set ACTIVE; the old ACTIVE set is kept in
//                  the INACTIVE buffer as PREVIOUS (the rollback target).
//   Rollback       swap ACTIVE and PREVIOUS again; twice = back where you were.
//   FreeInactive   release the INACTIVE buffer; no rollback afterwards.
//
// What the INACTIVE buffer holds (InactiveState):
//
//   EMPTY --Stage--> STAGED --Swap--> PREVIOUS --Rollback--> PREVIOUS (the other set)
//   STAGED   --Stage--> STAGED   the new set replaces the staged one.
//   PREVIOUS --Stage--> STAGED   the rollback target is DISCARDED: there is only
//                                one spare buffer, so staging new weights costs
//                                the ability to roll back to the previous ones.
//   any --FreeInactive--> EMPTY
//
// Failures never touch the ACTIVE weights; the model keeps serving them. After
// a failed Stage/StageFromFile/BeginUpload/Commit there is no staged set: a
// set staged earlier is discarded (and freed), so a later Swap() cannot put
// weights live that the operator was trying to replace. A PREVIOUS set
// survives failures found before anything was written (validation, checksum,
// incomplete upload); a failure while writing the buffer (LibTorch error, out
// of memory) leaves it partly overwritten, so it is freed and the state is
// EMPTY.
//
// Consistency: Swap, Rollback and FreeInactive run inside
// RunnerPool::RunExclusive, so no request is inside the container while the
// buffers change, and the version label that responses report
// (InferResponse::weights_version) changes in the same exclusive section:
// every response names the weights that computed it. Staging does NOT pause
// requests: the container's update and constant folding of the inactive side
// take no lock and never touch the active side, and the one-writer rule below
// keeps swaps and frees (the only operations that change which side is active
// or release memory) away meanwhile.
//
// Thread-safety: every method may be called from any thread. There is ONE
// writer per model at a time: Stage, StageFromFile, Swap, Rollback,
// FreeInactive and an UploadSession (from BeginUpload until Commit returns or
// the session is destroyed) each hold the model's writer slot. A second
// writer fails at once with FAILED_PRECONDITION ("another weight operation on
// model 'X' is in progress") rather than queueing: weight operations are rare
// admin actions, and an operator should learn of a conflict instead of having
// an old request run later. status() never waits for a writer.
//
// Memory: the INACTIVE buffer is allocated by the first Stage, at full weight
// size, so a model needs twice its weight memory while a set is staged or
// retained for rollback; FreeInactive gives it back. WeightSetInfo::bytes is
// the weight data (PackageInfo::constants_nbytes); BufferMemory is what a
// buffer holds in all (its blob plus constant-folded results, from
// PackageInfo::blob_nbytes / folded_nbytes) on the host or the device. The
// first Stage after a free constant-folds one extra time (a work-around for
// an AOTInductor crash, see FreeContainerInactive).
//
// Staging budgets: a push (Stage, StageFromFile, BeginUpload) first reserves
// the memory it will hold on top of the active set - its upload buffers plus
// the inactive buffer (plus its folded results once more after a free, for
// the refold) - against the model's own budget
// (ModelConfig::weights_staging_budget_bytes) and the server-wide
// StagingBudget, and is refused with RESOURCE_EXHAUSTED naming the budget
// before anything is allocated or received. The model's charge then follows
// what it holds: upload buffers until the push ends, the inactive buffer
// until FreeInactive (or a failure that frees it).
//
// Ownership: Model owns its manager (Model::weights()); the manager refers
// back to the model and must not outlive it. Neither may an UploadSession.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "devices/device.h"
#include "runtime/staging_budget.h"
#include "runtime/weight_set_check.h"  // StageOptions

namespace pt2serve {

class Model;
class UploadSession;
class PushProbe;
struct SafetensorsFile;

enum class InactiveState { kEmpty, kStaged, kPrevious };
// "EMPTY", "STAGED", "PREVIOUS".
std::string_view InactiveStateName(InactiveState state);

struct WeightSetInfo {
  std::string version;  // empty for an EMPTY buffer
  std::string sha256;   // as given in StageOptions (lower case), may be empty
  std::string source;
  size_t bytes = 0;     // memory the buffer holds (estimate)
  // Last state change: loaded, staged, swapped in or out.
  std::chrono::system_clock::time_point updated_at{};
};

// What one constant buffer holds, over all replicas: host memory for CPU
// replicas, device memory otherwise.
struct BufferMemory {
  size_t host_bytes = 0;
  size_t device_bytes = 0;
  size_t folded_bytes = 0;  // the part of the above that is constant-folded results
};

// Memory measured during the last push (Stage, StageFromFile or an upload,
// from its start or header to its end, successful or not).
struct PushMemory {
  std::string version;  // its version label; "" = no push yet
  bool ok = false;
  std::chrono::system_clock::time_point finished_at{};
  size_t staging_bytes = 0;       // reserved against the budgets
  size_t process_rss_before = 0;  // the daemon's VmRSS at the start
  size_t process_peak_rss = 0;    // its peak VmRSS during the push
  // Summed over the model's accelerators (driver's used memory, every
  // process); both 0 for CPU models or when the backend cannot tell.
  size_t device_used_before = 0;
  size_t device_peak_used = 0;
  // Copying the set into the inactive buffer of every replica (on an
  // accelerator: the host-to-device copy), and whether it read pinned
  // staging memory.
  std::chrono::microseconds write_time{0};
  size_t written_bytes = 0;
  bool pinned_staging = false;
  // With device staging: the set reached the device as a transient copy
  // first (through pinned memory, overlapped with reading or receiving it),
  // so write_time is a device-to-device copy. transfer_time is how long the
  // set took to reach the device from the first byte, hashing included
  // (files), or how long the commit waited for the last copies (uploads).
  bool device_staged = false;
  std::chrono::microseconds transfer_time{0};
  // Device staging: bytes copied to the device through the pinned ring, and
  // how long the copies themselves ran, measured on the device (0 where the
  // backend cannot time them). device_copy_bytes / device_copy_busy is the
  // host-to-device rate while copying.
  size_t device_copy_bytes = 0;
  std::chrono::microseconds device_copy_busy{0};
};

struct BufferStatus {
  WeightSetInfo active;
  InactiveState inactive_state = InactiveState::kEmpty;
  // For EMPTY only `bytes` may be non-zero (a Stage is writing into it).
  WeightSetInfo inactive;
  size_t bytes_in_use = 0;  // active.bytes + inactive.bytes

  BufferMemory active_memory;
  BufferMemory inactive_memory;  // non-zero while the buffer is allocated
  size_t upload_bytes = 0;       // host: upload buffers of a push in progress
  // Device: the transient copy of a push in progress (device staging).
  size_t device_upload_bytes = 0;
  // Charged against the staging budgets: upload_bytes + the inactive
  // buffer while allocated (or reserved by a push in progress).
  size_t staging_bytes = 0;
  size_t staging_budget = 0;  // the model's own; 0 = none
  PushMemory last_push;
};

struct SwapResult {
  std::string active_version;    // serving now
  std::string previous_version;  // what Rollback() would restore
  // Time requests were paused for the swap itself.
  std::chrono::nanoseconds swap_time{0};
  // Time spent waiting for in-flight requests to finish before that.
  std::chrono::nanoseconds wait_time{0};
  // Swap(V) found V already active and changed nothing.
  bool already_active = false;
};

class ConstantBufferManager {
 public:
  // Cheap; touches nothing in the container. REQUIRES: `model` is fully
  // constructed up to its pool and outlives this object. `server_budget`:
  // the server-wide staging budget shared by every model (null: none).
  explicit ConstantBufferManager(Model& model,
                                 std::shared_ptr<StagingBudget> server_budget = nullptr);
  ~ConstantBufferManager();
  ConstantBufferManager(const ConstantBufferManager&) = delete;
  ConstantBufferManager& operator=(const ConstantBufferManager&) = delete;

  // Validates `tensors` as a complete set of the package's updatable
  // constants (PackageInfo::constants: each FQN exactly once, no unknown
  // names, equal dtype and shape, data size matching) and writes them into the
  // INACTIVE buffer, then constant-folds that buffer so the first request
  // after the swap does not fold under the container's lock. Every problem is
  // reported in ONE INVALID_ARGUMENT ("3 problems: missing 'fc2.bias'; unknown
  // 'foo'; 'fc1.weight' has shape [64, 15], expected [64, 16]"). Replaces a
  // STAGED set; discards a PREVIOUS one (see the state diagram above).
  // RESOURCE_EXHAUSTED when the device runs out of memory, INTERNAL for other
  // LibTorch errors. The tensors are only read during the call.
  Status Stage(const std::vector<Tensor>& tensors, const StageOptions& options);

  // Stage() of a safetensors file, read through a memory map. On CPU the
  // container's copy into its buffer is the only full copy. A model with one
  // in-process accelerator replica gets the file's tensors moved to its
  // device while the file is hashed (one pass over the file, all
  // overlapped; DeviceStaging), into a transient device copy that is written
  // into the inactive buffer once the checksum matched. Other accelerator
  // models copy the tensors into pinned host memory in that pass instead.
  // Nothing is written to the inactive buffer before the checksum matched. NOT_FOUND for a missing
  // file; DATA_LOSS when options.sha256 is given and differs from the
  // SHA-256 of the file's bytes (what `sha256sum FILE` prints).
  Status StageFromFile(const std::string& safetensors_path, StageOptions options);

  // Starts a streamed upload of a complete weight set: validates the
  // announced names/dtypes/shapes up front (all problems in one
  // INVALID_ARGUMENT, like Stage), reserves the staging memory
  // (RESOURCE_EXHAUSTED naming the budget) and allocates one host buffer
  // per tensor for the chunks (with device staging, see StageFromFile, each
  // tensor also goes to the device as soon as it is complete). The session holds the writer slot until it is committed
  // or destroyed.
  // (The session's interface: runtime/upload_session.h.)
  StatusOr<std::unique_ptr<UploadSession>> BeginUpload(std::vector<TensorSpec> tensors,
                                                       StageOptions options);

  // Makes the STAGED set active; the old active set becomes PREVIOUS.
  // FAILED_PRECONDITION when nothing is staged, or when `expected_version` is
  // non-empty and differs from the staged version. UNAVAILABLE when the
  // model is shutting down.
  //
  // Compare-and-swap, safe to retry: when `expected_version` is non-empty and
  // already ACTIVE, it succeeds without swapping (already_active, nothing
  // changes: a retried commit never flips back). Otherwise, when
  // `expected_active` is non-empty, the swap happens only if the ACTIVE
  // version is that one (FAILED_PRECONDITION "... active, expected ...").
  StatusOr<SwapResult> Swap(std::string_view expected_version = "",
                            std::string_view expected_active = "");

  // Swaps ACTIVE and PREVIOUS: the rolled-back-from set becomes PREVIOUS, so
  // a second Rollback() returns to it. FAILED_PRECONDITION when no previous
  // set is retained (never swapped, freed, or discarded by a later Stage).
  StatusOr<SwapResult> Rollback();

  // Frees the INACTIVE buffer (a staged or previous set) with requests
  // paused, since freeing must never race a swap. Returns the bytes released
  // (estimate), 0 when nothing was held. Rollback fails afterwards.
  StatusOr<size_t> FreeInactive();

  BufferStatus status() const;

  // How long Swap/Rollback/FreeInactive wait for running requests to leave
  // the container before DEADLINE_EXCEEDED (the model keeps serving on the
  // weights it had). Not thread-safe: set before weight operations start.
  static constexpr std::chrono::milliseconds kDefaultDrainTimeout{30000};
  void set_drain_timeout(std::chrono::milliseconds timeout) { drain_timeout_ = timeout; }

  // Fault injection for tests: called before each per-replica step ("write",
  // "fold", "swap", "swap_back") with the replica's index; a non-OK result
  // is used as that step's failure. Not thread-safe: set before use.
  using FaultHook = std::function<Status(std::string_view op, size_t replica)>;
  void SetFaultHookForTest(FaultHook hook) { fault_hook_ = std::move(hook); }
  // Tests: StageFromFile copies the file's tensors into staging memory while
  // it hashes the file, as it does for accelerator models (with ordinary
  // memory here), so that CPU tests cover that path. Not thread-safe: set
  // before use.
  void CopyFileTensorsForTest() { copy_file_tensors_ = true; }
  // Tests: pushes go through DeviceStaging as for a model on one
  // accelerator, with the model's CPU as the "device". Not thread-safe: set
  // before use.
  void DeviceStagingForTest();

 private:
  friend class UploadSession;

  // The model's writer slot, held for the duration of one weight operation.
  // Move-only; releases on destruction.
  class WriterSlot {
   public:
    WriterSlot() = default;
    explicit WriterSlot(ConstantBufferManager* owner) : owner_(owner) {}
    WriterSlot(WriterSlot&& other) noexcept;
    WriterSlot& operator=(WriterSlot&& other) noexcept;
    ~WriterSlot() { Release(); }
    void Release();

   private:
    ConstantBufferManager* owner_ = nullptr;
  };

  struct WeightSet {
    WeightSetInfo info;  // `bytes` is filled in by status()
    // Known to be constant-folded. Sets we stage are; the compiled-in set is
    // folded by the first request, which we cannot observe.
    bool folded = false;
  };

  // FAILED_PRECONDITION when another writer holds the slot.
  StatusOr<WriterSlot> AcquireWriter();
  // Reserves a push's staging memory (`upload_bytes` of host buffers, a
  // transient device copy of `device_copy_bytes`, the inactive buffer, and
  // one more F when the freed buffer must be refolded first) against both
  // budgets, noting it in `probe`. REQUIRES: the writer slot.
  Status ReserveStaging(size_t upload_bytes, PushProbe& probe, size_t device_copy_bytes = 0);
  // StageFromFile's body with device staging; `upload_bytes` and
  // `device_bytes` are set to what it added to upload_bytes_ and
  // device_upload_bytes_ (released by the caller).
  Status StageFileThroughDevice(const SafetensorsFile& file, const StageOptions& options,
                                PushProbe& probe, size_t* upload_bytes, size_t* device_bytes);
  // Sets the budget charge to what is held now (upload_bytes_ + the
  // inactive buffer while allocated).
  void SyncCharge();
  // Upload buffers of `bytes` (and a transient device copy of
  // `device_bytes`) were allocated (+) or released (-).
  void AddUploadBytes(size_t bytes, size_t device_bytes = 0);
  void ReleaseUploadBytes(size_t bytes, size_t device_bytes = 0);
  // Ends `probe` and keeps its numbers as status().last_push.
  void RecordPush(PushProbe& probe, const std::string& version, bool ok);
  BufferMemory FullBuffer() const;
  // Runner slots of replica `index` (slot i runs on replica i % replicas).
  uint64_t ReplicaRunners(size_t index) const;
  // The test hook's verdict on `op` for replica `index` (OK without a hook).
  Status Injected(std::string_view op, size_t index) const;

  // The bodies of the public operations. REQUIRE: the writer slot is held.
  // `probe` (may be null) is sampled at each step.
  Status StageHoldingSlot(const std::vector<Tensor>& tensors, const StageOptions& options,
                          PushProbe* probe);
  // INVALID_ARGUMENT listing every way `tensors` is not a weight set of
  // this package (names, dtypes, shapes, sizes).
  Status CheckWeightSet(const std::vector<Tensor>& tensors, const StageOptions& options) const;
  StatusOr<SwapResult> SwapHoldingSlot();
  // Applies the failure rule (see top of file) and returns `error`.
  // `buffer_written`: the container's inactive buffer was (partly) written.
  Status FailStage(Status error, bool buffer_written);
  // free_inactive_constant_buffer() inside RunExclusive.
  Status FreeContainerInactive();

  Model& model_;
  const std::string model_name_;
  // How long a swap/rollback/free waits for running requests (a hung
  // inference) before it gives up with DEADLINE_EXCEEDED, changing nothing.
  std::chrono::milliseconds drain_timeout_{kDefaultDrainTimeout};
  FaultHook fault_hook_;  // tests only; set before any operation
  const size_t weight_bytes_;  // PackageInfo::constants_nbytes times the replicas
  // One buffer in all (blob + folded results) times the replicas.
  const size_t buffer_bytes_;
  const size_t folded_bytes_;
  const bool on_host_;                 // CPU replicas: buffers are host memory
  // What staging memory is allocated for (AllocateStagingMemory): the
  // replicas' devices when they run in this process, pinned for
  // accelerators; empty (plain heap) for CPU models and process-isolated
  // ones, whose weights are copied into a worker's shared memory anyway.
  const std::vector<DeviceSpec> staging_devices_;
  // StageFromFile copies the file's tensors into staging memory while it
  // hashes the file (accelerators: so that the device copy reads pinned
  // memory) instead of staging straight from the memory map.
  bool copy_file_tensors_;
  // The device a push moves the set to as it arrives (DeviceStaging): set
  // for a model with a single in-process replica on an accelerator that has
  // pinned host memory. Pushes then hold only DeviceStaging's ring and (for
  // uploads) the received chunks on the host, and a transient copy of the
  // set on the device until it is written into the inactive buffer.
  std::optional<DeviceSpec> device_staging_;
  const size_t staging_budget_;        // the model's own; 0 = none
  const std::unique_ptr<StagingBudget::Account> account_;  // in the server-wide budget

  // Written only by the writer-slot holder.
  // The inactive buffer was freed and must be refolded before the next write
  // (see FreeContainerInactive in the .cc).
  bool inactive_needs_refold_ = false;

  mutable std::mutex mu_;
  // Guarded by mu_. Invariant: inactive_state_ != kEmpty implies
  // inactive_allocated_.
  bool writer_busy_ = false;
  WeightSet active_;
  WeightSet inactive_;  // meaningful unless inactive_state_ == kEmpty
  InactiveState inactive_state_ = InactiveState::kEmpty;
  bool inactive_allocated_ = false;  // the container's inactive buffer may hold memory
  size_t upload_bytes_ = 0;          // upload buffers alive now
  size_t device_upload_bytes_ = 0;   // transient device copies alive now
  PushMemory last_push_;
};

}  // namespace pt2serve
