// Fuzz target: one raw UpdateConstantBufferRequest (protobuf wire bytes, a
// message of the admin port's weight-upload stream) through what the server
// does with it before any model state changes:
//   - ScanChunk, the zero-copy chunk scanner, differentially against
//     protobuf's own parser (the input is split into three gRPC slices, so
//     reads across slice boundaries are exercised);
//   - for a header: ManifestSpecs, then WeightSetProblems/ProblemsStatus
//     against a fixed set of constants, with the property that an accepted
//     manifest names every constant exactly once with its dtype and shape.
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/impl/grpc_library.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "runtime/weight_set_check.h"
#include "server/upload_codec.h"
#include "tests/fuzz/fuzz_check.h"

using namespace pt2serve;

// Protobuf logs every string field that is not UTF-8; mutated inputs have
// many. Silenced: the parse result is what the target checks.
static const bool g_quiet_protobuf = (google::protobuf::SetLogHandler(nullptr), true);

namespace {

// Sets up gRPC's core codegen interface, which grpc::Slice/ByteBuffer use
// (linking the server library would do it; this target links no server).
grpc::internal::GrpcLibraryInitializer g_grpc_library;

const std::vector<ConstantInfo>& Constants() {
  static const std::vector<ConstantInfo> constants = [] {
    std::vector<ConstantInfo> c = {{"emb", DType::kBFloat16, {2, 2}, 0},
                                   {"fc1.bias", DType::kFloat32, {4}, 0},
                                   {"fc1.weight", DType::kFloat32, {4, 3}, 0},
                                   {"scale", DType::kFloat64, {}, 0}};
    for (auto& info : c) info.nbytes = *ByteSize(info.shape, info.dtype);
    return c;
  }();
  return constants;
}

void CheckScan(const uint8_t* data, size_t size) {
  const size_t a = size / 3, b = 2 * size / 3;
  grpc::Slice slices[] = {grpc::Slice(data, a), grpc::Slice(data + a, b - a),
                          grpc::Slice(data + b, size - b)};
  grpc::ByteBuffer raw(slices, 3);
  auto layout = server::ScanChunk(raw);
  pt2serve::v1::UpdateConstantBufferRequest parsed;
  const bool parses = parsed.ParseFromArray(data, static_cast<int>(size));
  if (!layout) {
    // The fast path is not lost for what clients send: the bytes protobuf
    // writes for a chunk (known fields only) are always scanned.
    if (parses && parsed.kind_case() == pt2serve::v1::UpdateConstantBufferRequest::kChunk) {
      pt2serve::v1::UpdateConstantBufferRequest written;
      written.mutable_chunk()->set_name(parsed.chunk().name());
      written.mutable_chunk()->set_offset(parsed.chunk().offset());
      written.mutable_chunk()->set_data(parsed.chunk().data());
      FUZZ_CHECK(written.SerializeAsString() !=
                 std::string(reinterpret_cast<const char*>(data), size));
    }
    return;
  }
  // Whatever the scanner accepts, protobuf reads as the same chunk.
  FUZZ_CHECK(parses);
  FUZZ_CHECK(parsed.kind_case() == pt2serve::v1::UpdateConstantBufferRequest::kChunk);
  const auto& chunk = parsed.chunk();
  FUZZ_CHECK(chunk.name() == layout->name);
  FUZZ_CHECK(chunk.offset() == layout->offset);
  FUZZ_CHECK(chunk.data().size() == layout->data_size);
  FUZZ_CHECK(layout->data_at >= 0 &&
             static_cast<size_t>(layout->data_at) + layout->data_size <= size);
  FUZZ_CHECK(layout->data_size == 0 ||
             std::memcmp(data + layout->data_at, chunk.data().data(), layout->data_size) == 0);
}

void CheckHeader(const pt2serve::v1::UpdateHeader& header) {
  if (header.source_case() != pt2serve::v1::UpdateHeader::kTensors) return;
  auto specs = server::ManifestSpecs(header.tensors());
  if (!specs.ok()) {
    FUZZ_CHECK(specs.status().code() == StatusCode::kInvalidArgument);
    return;
  }
  FUZZ_CHECK(static_cast<int>(specs->size()) == header.tensors().entries_size());
  std::vector<OfferedTensor> offered;
  for (size_t i = 0; i < specs->size(); ++i) {
    const TensorSpec& spec = (*specs)[i];
    auto bytes = ByteSize(spec.shape, spec.dtype);
    FUZZ_CHECK(bytes.ok() && *bytes == header.tensors().entries(static_cast<int>(i)).byte_size());
    offered.push_back({spec.name, spec.dtype, &spec.shape, std::nullopt});
  }
  StageOptions options;
  options.version = header.version();
  options.sha256 = header.sha256();
  options.sha256_follows = header.sha256_in_trailer();
  const auto problems = WeightSetProblems(Constants(), offered, options);
  if (!problems.empty()) {
    const Status status = ProblemsStatus(header.model(), problems);
    FUZZ_CHECK(status.code() == StatusCode::kInvalidArgument);
    return;
  }
  // Accepted: a version, and exactly the constants, each once, same layout.
  FUZZ_CHECK(!options.version.empty());
  FUZZ_CHECK(specs->size() == Constants().size());
  std::map<std::string, const TensorSpec*> by_name;
  for (const TensorSpec& spec : *specs) FUZZ_CHECK(by_name.emplace(spec.name, &spec).second);
  for (const ConstantInfo& c : Constants()) {
    auto it = by_name.find(c.fqn);
    FUZZ_CHECK(it != by_name.end());
    FUZZ_CHECK(it->second->dtype == c.dtype && it->second->shape == c.shape);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CheckScan(data, size);
  pt2serve::v1::UpdateConstantBufferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (request.kind_case() == pt2serve::v1::UpdateConstantBufferRequest::kHeader) {
    CheckHeader(request.header());
  }
  return 0;
}
