// Reader for the safetensors format (weights files and test references).
//
// Layout: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {...}}, then the data block. Offsets are relative to the
// data block. The file is memory-mapped; returned tensors alias the mapping
// and keep it alive.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace pt2serve {

struct SafetensorsFile {
  std::vector<Tensor> tensors;  // in header order
  std::map<std::string, std::string> metadata;

  // NOT_FOUND for a missing file; INVALID_ARGUMENT naming the problem for a
  // malformed one (bad header, unknown dtype, offsets out of range or not
  // matching the shape).
  static StatusOr<SafetensorsFile> Open(const std::string& path);
  // Same, over bytes already in memory (kept alive by `owner`).
  static StatusOr<SafetensorsFile> Parse(const std::byte* data, size_t size,
                                         std::shared_ptr<const void> owner);

  const Tensor* Find(const std::string& name) const;
};

// Safetensors dtype code ("F32", "BF16", "I64", ...).
std::string_view SafetensorsDTypeCode(DType dtype);

}  // namespace pt2serve
