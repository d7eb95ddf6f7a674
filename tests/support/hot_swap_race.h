// The hot-swap race used by the CPU and CUDA tests: client threads call
// Infer() continuously while weight sets are staged and swapped in, and every
// response is checked against the eager reference of the version it reports.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/tensor.h"
#include "runtime/model.h"
#include "tests/support/test_models.h"

namespace pt2serve::testing {

struct HotSwapRaceOptions {
  int clients = 8;
  int cycles = 20;
  double tolerance = 1e-5;  // rtol and atol against the references
  // Every N-th cycle also rolls back twice and frees the inactive buffer.
  int rollback_every = 5;
};

struct HotSwapRaceResult {
  int failed = 0;           // requests that returned an error
  int wrong = 0;            // outputs that match no reference of their version
  int unknown_version = 0;  // versions that are neither initial nor staged
  std::string first_problem;
  std::map<std::string, int> responses;  // per reported version
  std::vector<double> swap_ms, drain_ms, stage_ms;
  std::string Summary() const;  // latencies and counts, for the test log
};

// `refs` maps version -> reference ("initial" must be there; all share one
// input); `sets` maps the versions to stage -> their weights. Swaps cycle
// through `sets` in order. Operations that fail end the race early with the
// reason in first_problem.
HotSwapRaceResult RunHotSwapRace(Model& model, const std::map<std::string, Reference>& refs,
                                 const std::map<std::string, std::vector<Tensor>>& sets,
                                 const HotSwapRaceOptions& options);

// Catch2 checks: no failed, wrong or unknown-version response, no failed
// weight operation, and every version in `served` answered at least once.
void ExpectCleanRace(const HotSwapRaceResult& race, const std::vector<std::string>& served);

}  // namespace pt2serve::testing
