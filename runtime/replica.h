// Replica: one loaded copy of a model's package on one device, the unit a
// Model runs requests on and applies weight operations to.
//
// Two implementations, chosen per model by ModelConfig::isolation:
//   LocalReplica   (in_process) the AOTInductor container lives in the
//                  daemon. Fastest; a kernel that aborts (an exception
//                  escaping an OpenMP region, a CUDA device-side assert)
//                  takes the whole daemon down.
//   WorkerReplica  (process) the same LocalReplica runs in a child process
//                  (pt2serve-worker); tensors cross through shared memory.
//                  A crash fails only the requests inside that process; the
//                  replica restarts the worker and restores its weights.
//
// Internal to runtime/; torch-free so both sides of the process boundary
// share it. Concurrency contract (enforced by Model's RunnerPool and the
// ConstantBufferManager's writer slot, not by the replica):
//   - Run() is called at most once at a time per slot, for slots
//     0..num_runners-1, concurrently across slots;
//   - weight operations (WriteInactive, FoldConstants, SwapBuffers,
//     FreeInactive) come from one writer at a time; FoldConstants(true) runs
//     with a runner slot held by the caller; SwapBuffers, FreeInactive and
//     FoldConstants(false) run with no request inside (RunExclusive).
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "runtime/package_info.h"
#include "runtime/runner_pool.h"

namespace pt2serve {

// Whether a replica can take requests.
enum class Availability {
  kServing,     // ready
  kRestarting,  // its worker died; requests wait for the restart
  kFailed,      // cannot serve again (e.g. a poisoned in-process device context)
};
std::string_view AvailabilityName(Availability a);  // "SERVING", "RESTARTING", "FAILED"

class Replica {
 public:
  virtual ~Replica() = default;

  virtual const PackageInfo& info() const = 0;
  virtual size_t num_runners() const = 0;

  // Runs one request on runner `slot`: `inputs` in signature order
  // (validated by the caller), `outputs` receives the outputs named by
  // `output_indices` as host tensors. A replica that is restarting is
  // waited for until `deadline`.
  virtual Status Run(size_t slot, const std::vector<const Tensor*>& inputs,
                     const std::vector<int>& output_indices, std::vector<Tensor>& outputs,
                     Deadline deadline) = 0;

  // Writes a complete, validated set of the package's updatable constants
  // (by FQN) into the INACTIVE constant buffer.
  virtual Status WriteInactive(const std::vector<Tensor>& tensors) = 0;
  // Constant-folds the inactive (true) or active (false) buffer.
  virtual Status FoldConstants(bool inactive) = 0;
  // Makes the inactive buffer active and the active one inactive.
  virtual Status SwapBuffers() = 0;
  // Releases the inactive buffer. Afterwards FoldConstants(true) must run
  // before the next WriteInactive (an AOTInductor work-around; see
  // LocalReplica::FreeInactive).
  virtual Status FreeInactive() = 0;

  virtual Availability availability() const = 0;
  // Why the replica is not serving (empty when it is).
  virtual std::string availability_reason() const = 0;
  // Worker processes started after the first one (0 in process).
  virtual uint64_t restarts() const { return 0; }
};

}  // namespace pt2serve
