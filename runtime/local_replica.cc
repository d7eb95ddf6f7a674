#include "runtime/local_replica.h"

#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner.h>

#include <new>
#include <unordered_map>

#include "devices/device_executor.h"
#include "devices/tensor_convert.h"

namespace pt2serve {

std::string_view AvailabilityName(Availability a) {
  switch (a) {
    case Availability::kServing: return "SERVING";
    case Availability::kRestarting: return "RESTARTING";
    case Availability::kFailed: return "FAILED";
  }
  return "UNKNOWN";
}

Status StatusFromException(const std::exception& e, const std::string& context) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) || dynamic_cast<const std::bad_alloc*>(&e)) {
    return ResourceExhausted("out of memory " + context + ": " + e.what());
  }
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) {
    return Internal(context + ": " + c10e->what_without_backtrace());
  }
  return Internal(context + ": " + e.what());
}

namespace {

// AOTInductor rethrows a kernel's exception as a new error whose message
// embeds the original one's C++ backtrace (file paths, load addresses):
// clients get the message without it.
Status WithoutBacktrace(Status status) {
  const std::string& m = status.message();
  const size_t cut = m.find("\nException raised from");
  if (cut == std::string::npos) return status;
  return Status(status.code(), m.substr(0, cut));
}

}  // namespace

StatusOr<std::unique_ptr<LocalReplica>> LocalReplica::Load(const ModelPackage::Options& options) {
  PT2_ASSIGN_OR_RETURN(auto package, ModelPackage::Load(options));
  std::vector<std::unique_ptr<DeviceExecutor>> executors;
  for (size_t i = 0; i < std::max<size_t>(options.num_runners, 1); ++i) {
    PT2_ASSIGN_OR_RETURN(auto executor, DeviceExecutor::Create(package->info().device));
    executors.push_back(std::move(executor));
  }
  return std::unique_ptr<LocalReplica>(new LocalReplica(std::move(package), std::move(executors)));
}

LocalReplica::LocalReplica(std::unique_ptr<ModelPackage> package,
                           std::vector<std::unique_ptr<DeviceExecutor>> executors)
    : package_(std::move(package)), executors_(std::move(executors)) {}

LocalReplica::~LocalReplica() {
  executors_.clear();
  package_.reset();  // explicitly: never from a static destructor
}

std::string LocalReplica::Where() const { return package_->info().device.ToString(); }

Availability LocalReplica::availability() const {
  return failed_.load() ? Availability::kFailed : Availability::kServing;
}

std::string LocalReplica::availability_reason() const {
  std::lock_guard lock(reason_mu_);
  return failed_reason_;
}

Status LocalReplica::FailedStatus() const {
  return Unavailable("replica on " + Where() + " is FAILED: " + availability_reason());
}

Status LocalReplica::Run(size_t slot, const std::vector<const Tensor*>& inputs,
                         const std::vector<int>& output_indices, std::vector<Tensor>& outputs,
                         Deadline /*deadline*/) {
  if (failed_.load()) return FailedStatus();
  const PackageInfo& info = package_->info();
  DeviceExecutor& executor = *executors_.at(slot);
  auto run = [&]() -> Status {
    PT2_ASSIGN_OR_RETURN(auto args, executor.Upload(inputs));
    PT2_ASSIGN_OR_RETURN(auto results, executor.RunOn([&](void* stream) {
                           return package_->Run(args, stream);
                         }));
    if (results.size() != info.signature.outputs.size()) {
      return Internal("model returned " + std::to_string(results.size()) +
                      " outputs, signature declares " +
                      std::to_string(info.signature.outputs.size()));
    }
    outputs.clear();
    for (int idx : output_indices) {
      PT2_ASSIGN_OR_RETURN(Tensor out,
                           executor.Download(results[idx], info.signature.outputs[idx].name));
      outputs.push_back(std::move(out));
    }
    // Requested-away outputs may still be in flight on the stream; the
    // runner is released only once nothing it queued is pending.
    if (output_indices.size() < results.size()) PT2_RETURN_IF_ERROR(executor.Synchronize());
    return Status::Ok();
  };
  Status status = run();
  if (status.ok()) return status;
  if (info.device.kind != DeviceKind::kCpu) CheckDeviceAfterFailure(slot, status);
  return WithoutBacktrace(std::move(status));
}

void LocalReplica::CheckDeviceAfterFailure(size_t slot, const Status& error) {
  // A sticky device error (CUDA: a device-side assert) makes every later
  // call on this context fail; a synchronize reports it.
  Status probe = executors_.at(slot)->Synchronize();
  if (probe.ok()) return;
  {
    std::lock_guard lock(reason_mu_);
    if (failed_reason_.empty()) {
      failed_reason_ = "the device context is unusable after a failed request (" +
                       error.message() + "; then: " + probe.message() + ")";
    }
  }
  failed_.store(true);
}

StatusOr<const std::map<std::string, std::string>*> LocalReplica::InternalNames() {
  if (!internal_names_.empty() || info().constants.empty()) return &internal_names_;
  std::unordered_map<std::string, std::string> to_fqn;
  try {
    to_fqn = package_->runner()->getConstantNamesToOriginalFQNs();
  } catch (const std::exception& e) {
    return StatusFromException(e, "reading constant names");
  }
  std::map<std::string, std::string> names;
  for (const ConstantInfo& c : info().constants) names[c.fqn];
  for (const auto& [internal, fqn] : to_fqn) {
    auto it = names.find(fqn);
    if (it == names.end()) continue;  // folded or not updatable
    if (!it->second.empty()) {
      return Internal("constant '" + fqn + "' has two internal names ('" + it->second + "', '" +
                      internal + "')");
    }
    it->second = internal;
  }
  for (const auto& [fqn, internal] : names) {
    if (internal.empty()) return Internal("no internal name for constant '" + fqn + "'");
  }
  internal_names_ = std::move(names);
  return &internal_names_;
}

Status LocalReplica::WriteInactive(const std::vector<Tensor>& tensors) {
  if (failed_.load()) return FailedStatus();
  PT2_ASSIGN_OR_RETURN(const auto* names, InternalNames());
  const DeviceSpec& device = info().device;
  // The container copies raw storage bytes without checking dtype or shape
  // (the caller validated them), from contiguous tensors with storage offset
  // 0 on the replica's device: ToAten wraps host memory as such (no copy on
  // CPU) and copies it to an accelerator otherwise, which on CUDA briefly
  // needs a third copy of the weights on the device.
  std::unordered_map<std::string, at::Tensor> by_internal_name;
  for (const Tensor& t : tensors) {
    auto it = names->find(t.name);
    if (it == names->end()) return InvalidArgument("unknown constant '" + t.name + "'");
    PT2_ASSIGN_OR_RETURN(at::Tensor converted, ToAten(t, device));
    by_internal_name.emplace(it->second, std::move(converted));
  }
  try {
    // The container allocates on the current device: make it the replica's.
    c10::DeviceGuard on_device(ToC10Device(device));
    package_->runner()->update_constant_buffer(by_internal_name, /*use_inactive=*/true,
                                               /*validate_full_updates=*/true);
  } catch (const std::exception& e) {
    return StatusFromException(e, "writing the inactive weights on " + Where());
  }
  // The copies above are queued on the device's default stream; runners use
  // streams of their own that do not wait for it (see SynchronizeDevice).
  PT2_RETURN_IF_ERROR(SynchronizeDevice(device));
  inactive_freed_ = false;
  return Status::Ok();
}

Status LocalReplica::FoldConstants(bool inactive) {
  if (failed_.load()) return FailedStatus();
  try {
    c10::DeviceGuard on_device(ToC10Device(info().device));
    package_->runner()->run_const_fold(inactive);  // on the default stream
  } catch (const std::exception& e) {
    return StatusFromException(e, "constant folding on " + Where());
  }
  // The fold kernels must finish before a swap lets requests on the runners'
  // own streams read the folded constants.
  return SynchronizeDevice(info().device);
}

Status LocalReplica::SwapBuffers() {
  if (failed_.load()) return FailedStatus();
  try {
    c10::DeviceGuard on_device(ToC10Device(info().device));
    package_->runner()->swap_constant_buffer();
    return Status::Ok();
  } catch (const std::exception& e) {
    return StatusFromException(e, "swapping the weights on " + Where());
  }
}

// free_inactive_constant_buffer() releases the inactive blob and resets the
// inactive map's constant-folded entries to null handles, but leaves them in
// the map. The next update of that buffer then dereferences a null handle
// (ConstantBufferSet::update_array -> aoti_torch_get_data_ptr): a segfault on
// torch 2.13 for any package compiled with runtime constant folding. The
// non-folded entries would still point into the freed blob, so refolding
// first would read freed memory.
//
// Work-around: before freeing, point the inactive buffer's non-folded entries
// at the ACTIVE weights (user_managed update: no copy, no blob). After the
// free they reference live memory, and the caller refolds them (creating
// valid folded entries) before the next write (the contract in replica.h).
// The active set cannot change in between: a swap needs a written inactive
// buffer. Cost: the container leaks one small tensor handle per constant per
// free in user-managed mode (PyTorch PR 194480), never the weight memory.
Status LocalReplica::FreeInactive() {
  if (failed_.load()) return FailedStatus();
  PT2_ASSIGN_OR_RETURN(const auto* names, InternalNames());
  try {
    c10::DeviceGuard on_device(ToC10Device(info().device));
    torch::inductor::AOTIModelContainerRunner* runner = package_->runner();
    if (!inactive_freed_) {  // else: already aliased and freed
      std::unordered_map<std::string, at::Tensor> aliases;
      for (auto& [fqn, tensor] : runner->extract_constants_map(/*use_inactive=*/false)) {
        auto it = names->find(fqn);
        if (it != names->end()) aliases.emplace(it->second, tensor);
      }
      runner->update_constant_buffer(aliases, /*use_inactive=*/true,
                                     /*validate_full_updates=*/true, /*user_managed=*/true);
    }
    runner->free_inactive_constant_buffer();
    inactive_freed_ = true;
  } catch (const std::exception& e) {
    return StatusFromException(e, "freeing the inactive weights on " + Where());
  }
  return Status::Ok();
}

}  // namespace pt2serve
