#include "tools/pt2ctl/weight_pusher.h"

#include "server/tensor_codec.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "common/background_sha256.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "tools/pt2ctl/progress_bar.h"

namespace pt2serve::ctl {
namespace {

namespace v1 = pt2serve::v1;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

std::string WeightPusher::DefaultVersion(const std::string& path) {
  return std::filesystem::path(path).stem().string();
}


StatusOr<v1::TensorManifest> WeightPusher::BuildManifest(const std::vector<Tensor>& tensors) {
  v1::TensorManifest manifest;
  for (const Tensor& t : tensors) {
    auto* entry = manifest.add_entries();
    entry->set_name(t.name);
    entry->set_dtype(server::ToProtoDType(t.dtype));
    for (int64_t d : t.shape) entry->add_shape(d);
    entry->set_byte_size(t.nbytes);
  }
  return manifest;
}

std::vector<ChunkRef> WeightPusher::PlanChunks(const std::vector<Tensor>& tensors,
                                               uint64_t chunk_bytes) {
  std::vector<ChunkRef> plan;
  if (chunk_bytes == 0) chunk_bytes = 1;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t n = tensors[i].nbytes;
    for (uint64_t offset = 0; offset < n; offset += chunk_bytes) {
      plan.push_back({i, offset, std::min(chunk_bytes, n - offset)});
    }
  }
  return plan;
}

Outcome WeightPusher::Push(const PushOptions& options, PushResult* result) {
  *result = PushResult();
  result->version = options.version.empty() ? DefaultVersion(options.file) : options.version;
  if (result->version.empty()) {
    return Outcome::LocalError("cannot derive a version label from '" + options.file +
                               "'; pass --version");
  }
  return options.server_side ? PushServerSide(options, result) : PushStream(options, result);
}

Outcome WeightPusher::PushStream(const PushOptions& options, PushResult* result) {
  const auto start = Clock::now();
  auto file = SafetensorsFile::Open(options.file);
  if (!file.ok()) return Outcome::LocalError(file.status());
  if (file->tensors.empty()) {
    return Outcome::LocalError(options.file + " holds no tensors");
  }
  const std::vector<Tensor>& tensors = file->tensors;
  v1::UpdateConstantBufferRequest request;
  v1::UpdateHeader* header = request.mutable_header();
  {
    auto manifest = BuildManifest(tensors);
    if (!manifest.ok()) return Outcome::LocalError(manifest.status().WithPrefix(options.file));
    *header->mutable_tensors() = std::move(manifest).value();
  }
  const std::vector<ChunkRef> plan = PlanChunks(tensors, options.chunk_bytes);
  uint64_t total = 0;
  for (const Tensor& t : tensors) total += t.nbytes;
  result->tensors = tensors.size();
  header->set_model(options.model);
  header->set_version(result->version);
  header->set_sha256_in_trailer(true);

  ProgressBar bar("push " + options.model, total, options.progress);
  auto ctx = client_.NewAdminContext();
  auto writer = client_.admin_stub().UpdateConstantBuffer(ctx.get(), &result->response);
  // Hashes the mapped file (alive as long as `file`) while the chunks go out.
  BackgroundSha256 hasher;
  bool ok = writer->Write(request);
  // One chunk message, reused: its data string keeps its capacity, so each
  // chunk is copied into memory that is already mapped (a fresh 2 MiB buffer
  // per chunk cost a page fault per 4 KiB, ~1/3 of pt2ctl's time).
  request.Clear();
  v1::TensorChunk* chunk = request.mutable_chunk();
  for (const ChunkRef& c : plan) {
    if (!ok) break;  // the server ended the stream (an error) or it broke
    const Tensor& t = tensors[c.tensor];
    hasher.Update(t.data + c.offset, c.size);
    if (chunk->name() != t.name) chunk->set_name(t.name);
    chunk->set_offset(c.offset);
    chunk->set_data(t.data + c.offset, c.size);
    ok = writer->Write(request);
    if (ok) {
      result->bytes_sent += c.size;
      ++result->chunks;
      bar.Update(result->bytes_sent);
    }
  }
  if (ok) {
    result->sha256 = hasher.FinishHex();
    request.Clear();
    request.mutable_trailer()->set_sha256(result->sha256);
    ok = writer->Write(request);
  }
  if (ok) {
    bar.SetLabel("stage " + options.model);  // the server copies and folds now
    writer->WritesDone();
  }
  const grpc::Status status = writer->Finish();
  bar.Finish();
  result->seconds = SecondsSince(start);
  return client_.AdminOutcome(status);
}

Outcome WeightPusher::PushServerSide(const PushOptions& options, PushResult* result) {
  const auto start = Clock::now();
  if (!options.sha256.empty()) {
    if (!Sha256::IsHexDigest(options.sha256)) {
      return Outcome::LocalError("--sha256 must be 64 hex digits");
    }
    result->sha256 = options.sha256;
  } else if (std::filesystem::is_regular_file(options.file)) {
    // A local copy at the same relative path: check it parses, then let the
    // server verify that its file has the same bytes.
    auto file = SafetensorsFile::Open(options.file);
    if (!file.ok()) return Outcome::LocalError(file.status().WithPrefix("local copy"));
    result->tensors = file->tensors.size();
    auto digest = Sha256::HexOfFile(options.file);
    if (!digest.ok()) return Outcome::LocalError(digest.status());
    result->sha256 = *digest;
  }
  v1::UpdateConstantBufferRequest request;
  v1::UpdateHeader* header = request.mutable_header();
  header->set_model(options.model);
  header->set_version(result->version);
  header->set_sha256(result->sha256);
  header->set_server_path(options.file);

  auto ctx = client_.NewAdminContext();
  auto writer = client_.admin_stub().UpdateConstantBuffer(ctx.get(), &result->response);
  if (writer->Write(request)) writer->WritesDone();
  const grpc::Status status = writer->Finish();
  result->seconds = SecondsSince(start);
  return client_.AdminOutcome(status);
}

}  // namespace pt2serve::ctl
