// What both request fuzz targets (KServe and native) do with the tensors a
// decoder accepted: the checks the inference path makes next
// (ValidateAgainstSpec per input, CheckSharedDims across them), against a
// fixed signature with static, ranged and symbol-shared dims, plus the
// property that matters for memory safety: a tensor that passes validation
// has exactly ByteSize(shape, dtype) bytes, all readable.
#pragma once

#include <cstring>
#include <vector>

#include "common/tensor.h"
#include "tests/fuzz/fuzz_check.h"

namespace pt2serve::fuzz {

// x: float32 [-1, 16] (batch 1..64); ids: int64 [-1, -1] and mask: bool
// [-1, -1] sharing "batch" and "seq" (1..512); h: bfloat16 [2, -1].
inline const Signature& RequestSignature() {
  static const Signature sig = [] {
    Signature s;
    const DimRange batch{1, 64, "batch"};
    const DimRange seq{1, 512, "seq"};
    s.inputs.push_back({"x", DType::kFloat32, {-1, 16}, {batch, {}}});
    s.inputs.push_back({"ids", DType::kInt64, {-1, -1}, {batch, seq}});
    s.inputs.push_back({"mask", DType::kBool, {-1, -1}, {batch, seq}});
    s.inputs.push_back({"h", DType::kBFloat16, {2, -1}, {}});
    s.max_batch_size = 64;
    return s;
  }();
  return sig;
}

// Validates decoded inputs the way InferenceCore/Model would and checks the
// results are consistent. Reads every byte of an accepted tensor, so a
// dangling or short buffer shows up under ASan.
inline void CheckDecodedInputs(const std::vector<Tensor>& inputs) {
  const Signature& sig = RequestSignature();
  std::vector<const Tensor*> ordered(sig.inputs.size(), nullptr);
  size_t valid = 0;
  for (const Tensor& t : inputs) {
    FUZZ_CHECK(t.nbytes == 0 || t.data != nullptr);
    const int index = sig.InputIndex(t.name);
    if (index < 0) continue;
    if (!ValidateAgainstSpec(t, sig.inputs[index]).ok()) continue;
    auto size = ByteSize(t.shape, t.dtype);
    FUZZ_CHECK(size.ok() && *size == t.nbytes);
    unsigned char sum = 0;
    for (size_t i = 0; i < t.nbytes; ++i) sum ^= static_cast<unsigned char>(t.data[i]);
    (void)sum;
    if (!ordered[index]) {
      ordered[index] = &t;
      ++valid;
    }
  }
  if (valid == sig.inputs.size()) {
    Status shared = CheckSharedDims(sig, ordered);
    if (shared.ok()) {
      // Accepted: ids and mask agree on both dims, and batch with x.
      FUZZ_CHECK(ordered[1]->shape[0] == ordered[2]->shape[0]);
      FUZZ_CHECK(ordered[1]->shape[1] == ordered[2]->shape[1]);
      FUZZ_CHECK(ordered[0]->shape[0] == ordered[1]->shape[0]);
    }
  }
}

}  // namespace pt2serve::fuzz
