#include "server/upload_codec.h"

#include <climits>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/stubs/common.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "server/tensor_codec.h"

namespace pt2serve::server {
namespace {

using google::protobuf::io::CodedInputStream;
using google::protobuf::internal::WireFormatLite;

constexpr uint32_t Tag(int field, WireFormatLite::WireType type) {
  return (static_cast<uint32_t>(field) << 3) | static_cast<uint32_t>(type);
}

// Protobuf's parser reads a length prefix in at most 5 bytes and refuses one
// of 2 GiB or more (less its 16 bytes of slop); ReadVarint32 alone takes up to
// 10 bytes and truncates. Found by fuzzing: a 6-byte prefix passed the scan.
bool ReadSize(CodedInputStream& in, uint32_t& size) {
  const int start = in.CurrentPosition();
  uint64_t value = 0;
  if (!in.ReadVarint64(&value)) return false;
  if (in.CurrentPosition() - start > 5 || value > uint64_t{INT_MAX} - 16) return false;
  size = static_cast<uint32_t>(value);
  return true;
}

// ReadTag, but 0 (not a chunk) for a tag longer than the 5 bytes protobuf's
// parser accepts.
uint32_t ReadTag(CodedInputStream& in) {
  const int start = in.CurrentPosition();
  const uint32_t tag = in.ReadTag();
  return in.CurrentPosition() - start > 5 ? 0 : tag;
}

}  // namespace

StatusOr<std::vector<TensorSpec>> ManifestSpecs(const pt2serve::v1::TensorManifest& manifest) {
  std::vector<TensorSpec> specs;
  for (const auto& entry : manifest.entries()) {
    TensorSpec spec;
    spec.name = entry.name();
    auto dtype = FromProtoDType(entry.dtype());
    if (!dtype.ok()) return dtype.status().WithPrefix("tensor '" + entry.name() + "'");
    spec.dtype = *dtype;
    spec.shape.assign(entry.shape().begin(), entry.shape().end());
    auto size = ByteSize(spec.shape, spec.dtype);
    if (!size.ok()) return size.status().WithPrefix("tensor '" + entry.name() + "'");
    const uint64_t expected = *size;
    if (entry.byte_size() != expected) {
      return InvalidArgument("tensor '" + entry.name() + "': byte_size " +
                             std::to_string(entry.byte_size()) + " does not match shape " +
                             ShapeToString(spec.shape) + " (" + std::to_string(expected) +
                             " bytes)");
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

std::optional<ChunkLayout> ScanChunk(grpc::ByteBuffer& raw) {
  constexpr auto kBytes = WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
  grpc::ProtoBufferReader reader(&raw);
  CodedInputStream in(&reader);
  uint32_t length = 0;
  if (ReadTag(in) != Tag(2, kBytes) || !ReadSize(in, length)) return std::nullopt;
  const auto limit = in.PushLimit(static_cast<int>(length));
  ChunkLayout chunk;
  bool name = false, offset = false, data = false;
  while (const uint32_t tag = ReadTag(in)) {
    if (tag == Tag(1, kBytes) && !name) {
      if (!WireFormatLite::ReadString(&in, &chunk.name)) return std::nullopt;
      // TensorChunk.name is a proto3 string: protobuf refuses a message whose
      // name is not UTF-8, so the scan must too (found by fuzzing; without
      // this such a chunk was taken as a write to an unannounced tensor).
      if (!google::protobuf::internal::IsStructurallyValidUTF8(chunk.name.data(),
                                                               static_cast<int>(chunk.name.size()))) {
        return std::nullopt;
      }
      name = true;
    } else if (tag == Tag(2, WireFormatLite::WIRETYPE_VARINT) && !offset) {
      if (!in.ReadVarint64(&chunk.offset)) return std::nullopt;
      offset = true;
    } else if (tag == Tag(3, kBytes) && !data) {
      if (!ReadSize(in, chunk.data_size)) return std::nullopt;
      chunk.data_at = in.CurrentPosition();
      if (!in.Skip(static_cast<int>(chunk.data_size))) return std::nullopt;
      data = true;
    } else {
      return std::nullopt;
    }
  }
  // The loop also ends on a literal tag 0, which protobuf refuses (found by
  // fuzzing): the chunk must end exactly at its length, on no tag.
  if (in.BytesUntilLimit() != 0 || !in.ConsumedEntireMessage()) return std::nullopt;
  in.PopLimit(limit);
  if (in.ReadTag() != 0 || !in.ConsumedEntireMessage()) return std::nullopt;
  return chunk;
}

}  // namespace pt2serve::server
