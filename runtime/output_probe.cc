#include "runtime/output_probe.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>

#include "devices/tensor_convert.h"

namespace pt2serve {
namespace {

// Sizes for one probe: dynamic dims sharing a symbol get one value.
StatusOr<std::vector<at::Tensor>> MakeInputs(const Signature& sig, const DeviceSpec& device,
                                             bool larger) {
  std::map<std::string, int64_t> by_symbol;
  std::vector<at::Tensor> inputs;
  for (const TensorSpec& spec : sig.inputs) {
    std::vector<int64_t> sizes;
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      if (spec.shape[d] >= 0) {
        sizes.push_back(spec.shape[d]);
        continue;
      }
      const DimRange r = d < spec.dims.size() ? spec.dims[d] : DimRange{};
      int64_t v = std::max<int64_t>(r.min, 2);
      if (larger) v += 1;
      v = std::min(v, r.max);
      if (!r.symbol.empty()) v = by_symbol.try_emplace(r.symbol, v).first->second;
      sizes.push_back(v);
    }
    auto scalar = ToScalarType(spec.dtype);
    if (!scalar) return InvalidArgument("input '" + spec.name + "' has an unsupported dtype");
    inputs.push_back(at::zeros(sizes, at::TensorOptions().dtype(*scalar).device(
                                          ToC10Device(device))));
  }
  return inputs;
}

}  // namespace

Status ProbeOutputs(const DeviceSpec& device, const RunFn& run, Signature* sig) {
  std::vector<std::vector<at::Tensor>> results;
  for (bool larger : {false, true}) {
    PT2_ASSIGN_OR_RETURN(auto inputs, MakeInputs(*sig, device, larger));
    auto out = run(inputs);
    if (!out.ok()) {
      return out.status().WithPrefix("running the model on zero inputs to learn its outputs");
    }
    if (out->size() != sig->outputs.size()) {
      return Internal("the model returned " + std::to_string(out->size()) +
                      " outputs, its package declares " + std::to_string(sig->outputs.size()));
    }
    results.push_back(std::move(*out));
  }
  for (size_t i = 0; i < sig->outputs.size(); ++i) {
    const at::Tensor& a = results[0][i];
    const at::Tensor& b = results[1][i];
    auto dtype = FromScalarType(a.scalar_type());
    if (!dtype) {
      return InvalidArgument("output " + std::to_string(i) + " has a dtype pt2serve cannot serve");
    }
    TensorSpec& spec = sig->outputs[i];
    spec.dtype = *dtype;
    spec.shape.clear();
    if (a.dim() != b.dim()) {
      return InvalidArgument("output " + std::to_string(i) + " changes rank with input sizes");
    }
    for (int64_t d = 0; d < a.dim(); ++d) {
      spec.shape.push_back(a.size(d) == b.size(d) ? a.size(d) : -1);
    }
  }
  // Triton's batching convention needs every output batched too.
  if (sig->max_batch_size > 0) {
    for (const TensorSpec& o : sig->outputs) {
      if (o.shape.empty() || o.shape[0] >= 0) sig->max_batch_size = 0;
    }
  }
  return Status::Ok();
}

}  // namespace pt2serve
