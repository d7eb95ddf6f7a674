// LocalReplica: a Replica whose AOTInductor container lives in this process.
//
// Owns one ModelPackage (the container, `num_runners` model instances that
// share the weights) and one DeviceExecutor per runner slot (its stream and
// staging). Used directly by in_process models, and inside pt2serve-worker
// for process-isolated ones.
//
// Containment: LibTorch exceptions that reach the call become statuses. A
// kernel that aborts the process cannot be caught here (that is what
// WorkerReplica is for). On an accelerator, a failed run is followed by a
// device check: if the device context is unusable afterwards (a CUDA
// device-side assert is sticky), the replica turns FAILED and refuses
// further work, since every later call on that context would fail too.
//
// Thread-safety: see the contract in replica.h.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/model_package.h"
#include "runtime/replica.h"

namespace pt2serve {

class DeviceExecutor;

class LocalReplica final : public Replica {
 public:
  static StatusOr<std::unique_ptr<LocalReplica>> Load(const ModelPackage::Options& options);
  ~LocalReplica() override;

  const PackageInfo& info() const override { return package_->info(); }
  size_t num_runners() const override { return executors_.size(); }
  Status Run(size_t slot, const std::vector<const Tensor*>& inputs,
             const std::vector<int>& output_indices, std::vector<Tensor>& outputs,
             Deadline deadline) override;
  Status WriteInactive(const std::vector<Tensor>& tensors) override;
  Status FoldConstants(bool inactive) override;
  Status SwapBuffers() override;
  Status FreeInactive() override;
  Availability availability() const override;
  std::string availability_reason() const override;

  ModelPackage& package() { return *package_; }

 private:
  LocalReplica(std::unique_ptr<ModelPackage> package,
               std::vector<std::unique_ptr<DeviceExecutor>> executors);
  // FQN -> the container's internal constant name, built on first use.
  // REQUIRES: the writer (see replica.h).
  StatusOr<const std::map<std::string, std::string>*> InternalNames();
  // After a failed run on an accelerator: turns FAILED when the device no
  // longer works.
  void CheckDeviceAfterFailure(size_t slot, const Status& error);
  // Status for a replica that refuses work.
  Status FailedStatus() const;
  std::string Where() const;

  std::unique_ptr<ModelPackage> package_;
  std::vector<std::unique_ptr<DeviceExecutor>> executors_;  // [slot]

  // Written only by the writer.
  std::map<std::string, std::string> internal_names_;
  bool inactive_freed_ = false;  // the inactive buffer's entries alias the active weights

  std::atomic<bool> failed_{false};
  mutable std::mutex reason_mu_;
  std::string failed_reason_;  // guarded by reason_mu_
};

// Maps a LibTorch/C++ exception to a Status: RESOURCE_EXHAUSTED for
// out-of-memory, INTERNAL otherwise, with `context` and the message (without
// the C++ backtrace).
Status StatusFromException(const std::exception& e, const std::string& context);

}  // namespace pt2serve
