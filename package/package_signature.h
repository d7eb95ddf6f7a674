// The signature of a package without pt2serve metadata, derived from what
// the package holds (its wrapper source and call spec).
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "package/wrapper_source.h"

namespace pt2serve {

struct DerivedSignature {
  // Inputs complete (names, dtypes, dims with ranges and shared symbols).
  // Outputs carry names only: their dtype and shape are not in the wrapper
  // source, so `outputs_known` is false and the runtime fills them in by
  // running the model once at load (runtime/output_probe.h).
  Signature signature;
  bool outputs_known = false;
  // Human-readable remarks on what was assumed (shown by inspect).
  std::vector<std::string> notes;
};

// Names: keyword arguments keep their name (the in_spec records dict keys),
// positional ones become input__0, input__1, ... (their names are not in the
// package); outputs returned as a dict keep their keys, else output__0, ...
// A dynamic dim whose recorded lower bound is 2 accepts 1: torch.export
// traces dims declared >= 1 as >= 2 (0/1 specialization), and the compiled
// code is valid for 1.
StatusOr<DerivedSignature> DeriveSignature(const WrapperFacts& facts);

// Checks a declared signature (config) against what the package holds:
// input count, dtypes, ranks, static dims, and dynamic ranges no wider than
// the package's. `derived` as returned by DeriveSignature. The declared
// signature keeps its names; unset range bounds (min 0, max unbounded) and
// shared-dim symbols are taken from `derived`.
StatusOr<Signature> ReconcileDeclared(const Signature& declared,
                                      const DerivedSignature& derived);

}  // namespace pt2serve
