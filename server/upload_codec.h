// Decoding of UpdateConstantBuffer messages that needs no model: the tensors
// a header's manifest announces, and the zero-copy scan of a chunk message.
//
// Pure functions of their arguments (torch-free, part of pt2serve_wire), so
// UpdateReactor, tests and the fuzz target (tests/fuzz/upload_manifest_fuzz.cc)
// share them.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "pt2serve/v1/admin.pb.h"

namespace pt2serve::server {

// The tensors a `tensors` header announces, in manifest order. INVALID_ARGUMENT
// naming the tensor for an unknown dtype, a negative dim or a byte size that
// does not fit in 63 bits, or a byte_size that differs from the shape's.
// Names, duplicates and the model's constants are checked later
// (WeightSetProblems).
StatusOr<std::vector<TensorSpec>> ManifestSpecs(const pt2serve::v1::TensorManifest& manifest);

// Where the fields of a chunk lie in a raw UpdateConstantBufferRequest.
struct ChunkLayout {
  std::string name;
  uint64_t offset = 0;
  int data_at = 0;  // byte position of TensorChunk.data in the message
  uint32_t data_size = 0;
};

// Scans `raw` without copying TensorChunk.data: succeeds for a message that
// is exactly one `chunk` field with name, offset and data at most once each
// (what every protobuf library writes), with a name that is valid UTF-8.
// nullopt for anything else, which the caller then parses the ordinary way
// (and so gets protobuf's exact rules). Invariant (checked by the fuzz
// target): whenever it succeeds, protobuf parses `raw` as a chunk with the
// same name, offset and data.
std::optional<ChunkLayout> ScanChunk(grpc::ByteBuffer& raw);

}  // namespace pt2serve::server
