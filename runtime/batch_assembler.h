// Batch assembly: the pure tensor work of dynamic batching, torch-free.
//
// A batch is formed from requests whose inputs agree on every dim except the
// leading (batch) one: ShapeKey() says whether two requests can share a
// batch, ConcatRows() joins their inputs along dim 0 into one call's inputs,
// and SplitRows() cuts that call's outputs back into one set per request.
// Split outputs share the batch output's memory (no copy).
//
// Thread-safety: free functions without shared state.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace pt2serve {

// Dims of every input after the batch dim, one rank marker per input: equal
// keys mean the requests can be concatenated. `inputs` in signature order,
// each with rank >= 1 (validated).
std::vector<int64_t> ShapeKey(const std::vector<const Tensor*>& inputs);

// Concatenates request r's input i (requests[r][i]) along dim 0 for every
// input i. REQUIRES: all requests have equal ShapeKey and the same dtypes.
// The result owns its memory.
std::vector<Tensor> ConcatRows(const std::vector<std::vector<const Tensor*>>& requests);

// Splits every output along dim 0 into consecutive pieces of `rows[r]` rows
// (request r gets out[r][j] for output j). INTERNAL, naming the output, when
// an output's dim 0 is not the sum of `rows` (a model whose outputs do not
// follow the batch dim cannot be batched).
Status SplitRows(const std::vector<Tensor>& outputs, const std::vector<int64_t>& rows,
                 std::vector<std::vector<Tensor>>& out);

}  // namespace pt2serve
