// Facts read from the C++ source AOTInductor generates for a model (the
// `*.wrapper.cpp` every package ships): inputs with their dtype and the
// per-dim checks it compiled in, output count, the call spec, and the
// constants table. Text parsing of generated code: what it relies on is
// listed in wrapper_source.cc and pinned by tests/package/ against packages
// built by the torch version the project links.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace pt2serve {

struct WrapperInput {
  std::string placeholder;  // graph placeholder name, e.g. "arg9_1"
  std::optional<DType> dtype;
  // From the input's size assertion, one per dim: a literal ("16"), a symbol
  // ("s31") or an expression ("2*s27"). Empty when the source has none.
  std::vector<std::string> dim_exprs;
  bool has_dim_exprs = false;
  // From check_input_<i>: dim -> value.
  std::map<size_t, int64_t> fixed, min, max;
};

struct WrapperConstant {
  std::string name;  // internal name, e.g. "fc1_weight"
  std::string fqn;   // original FQN, e.g. "fc1.weight" ("" if none)
  std::optional<DType> dtype;
  Shape shape;
  uint64_t nbytes = 0;
  bool from_folded = false;
  // torch::aot_inductor::ConstantType name: Parameter, Buffer,
  // TensorConstant, FoldedConstant, Unknown.
  std::string type;
};

struct WrapperFacts {
  std::vector<WrapperInput> inputs;
  std::vector<std::string> output_names;  // container names, e.g. "output0"
  std::string in_spec;                    // pytree JSON of the inputs
  std::string out_spec;                   // pytree JSON of the outputs
  std::vector<WrapperConstant> constants;
  // False when compiled without aot_inductor.use_runtime_constant_folding:
  // then some parameters were folded into other constants at compile time
  // and are not in `constants` at all.
  bool runtime_constant_folding = true;
};

// Parses a wrapper source. INVALID_ARGUMENT when it does not look like one
// (no inputs_info_ assignments).
StatusOr<WrapperFacts> ParseWrapperSource(std::string_view source);

}  // namespace pt2serve
