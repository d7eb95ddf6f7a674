// FaultInjection: TEST-ONLY failures injected into weight operations of the
// real daemon, so that integration tests can check what a failed staging
// allocation, constant fold or swap leaves behind (tests/integration/
// test_fault_injection.py). Never set it in production.
//
// Read once at start-up from the environment variable PT2SERVE_FAULT_INJECT
// (server/main.cc); the daemon logs a warning naming every fault when it is
// set. Syntax: a comma-separated list of OP:MODEL[:CALLS]
//
//   OP      stage_alloc  staging cannot allocate the inactive weight buffer:
//                        the push fails with RESOURCE_EXHAUSTED, as it does
//                        when the device is out of memory (before the write)
//           fold         constant folding of the staged set fails (INTERNAL,
//                        after the inactive buffer was written)
//           swap         the buffer swap fails (INTERNAL)
//   MODEL   the model name the fault applies to
//   CALLS   which calls of that step fail, counted from 1 per loaded model
//           (each replica's step is one call; a refold after free-inactive
//           is a fold call too): N, N-M, or N- (N and every later one).
//           Default: every call.
//
// e.g. PT2SERVE_FAULT_INJECT=stage_alloc:big:2-3,swap:mlp
//
// Implemented with ConstantBufferManager's fault hook, installed on each
// model as it loads (ModelRegistry::SetLoadedHook), so nothing in runtime/
// knows about the environment.
//
// Thread-safety: immutable after Parse; Install may be called from any
// thread; the installed hooks count calls atomically.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pt2serve {
class Model;
}

namespace pt2serve::server {

inline constexpr char kFaultInjectEnv[] = "PT2SERVE_FAULT_INJECT";

class FaultInjection {
 public:
  struct Fault {
    std::string op;     // stage_alloc, fold, swap
    std::string model;
    uint64_t first = 1;
    uint64_t last = UINT64_MAX;  // inclusive
  };

  FaultInjection() = default;
  // INVALID_ARGUMENT naming the entry for a bad spec; "" gives no faults.
  static StatusOr<FaultInjection> Parse(std::string_view spec);

  bool empty() const { return faults_.empty(); }
  const std::string& spec() const { return spec_; }
  // Installs the faults that name `model` as its weights' fault hook.
  void Install(Model& model) const;

 private:
  std::string spec_;
  std::vector<Fault> faults_;
};

}  // namespace pt2serve::server
