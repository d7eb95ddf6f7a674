// Reader for the safetensors format (weights files and test references).
//
// Layout: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {...}}, then the data block. Offsets are relative to the
// data block. The file is memory-mapped; returned tensors alias the mapping
// and keep it alive.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace pt2serve {

struct SafetensorsFile {
  std::vector<Tensor> tensors;  // in header order
  std::map<std::string, std::string> metadata;
  // The whole file image (header included), kept alive by `owner` (also
  // when the file holds no tensor) and by each tensor's owner.
  const std::byte* bytes = nullptr;
  size_t size = 0;
  std::shared_ptr<const void> owner;

  // NOT_FOUND for a missing file; INVALID_ARGUMENT naming the problem for a
  // malformed one (bad header, unknown dtype, offsets out of range or not
  // matching the shape).
  static StatusOr<SafetensorsFile> Open(const std::string& path);
  // Same, over bytes already in memory (kept alive by `owner`).
  static StatusOr<SafetensorsFile> Parse(const std::byte* data, size_t size,
                                         std::shared_ptr<const void> owner);

  const Tensor* Find(const std::string& name) const;

  // Copies tensor i's bytes to dest[i] (parallel to `tensors`, each holding
  // tensors[i].nbytes) and returns the lower-case hex SHA-256 of the whole
  // file image when `with_sha256` (else ""), in one pass over the file: a
  // oneTBB pipeline copies blocks (kDefaultBlockBytes) on several threads (which also pages
  // a cold file in) while one thread hashes the blocks in order behind them.
  // The hash is the longest stage (one SHA-256 stream cannot be split), so
  // the copies cost almost no extra time. REQUIRES: dest.size() ==
  // tensors.size(); the destinations do not overlap.
  std::string CopyTensors(const std::vector<std::byte*>& dest, bool with_sha256) const;

  // The same pass with the copy left to `copy(i, offset, src, size)`: called
  // for every piece of every tensor (tensor i's bytes [offset, offset +
  // size), read from `src` in the mapping), several at once on oneTBB
  // threads. The file is cut into blocks of `block_bytes` (a caller that
  // forwards pieces to its own blocks passes their size). Returns the digest
  // as above, or the first error of `copy` (the pass then stops early).
  static constexpr size_t kDefaultBlockBytes = 16 << 20;
  using PieceCopy =
      std::function<Status(size_t tensor, size_t offset, const std::byte* src, size_t size)>;
  StatusOr<std::string> CopyTensors(const PieceCopy& copy, bool with_sha256,
                                    size_t block_bytes = kDefaultBlockBytes) const;
};

// Safetensors dtype code ("F32", "BF16", "I64", ...).
std::string_view SafetensorsDTypeCode(DType dtype);

}  // namespace pt2serve
