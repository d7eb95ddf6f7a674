// WeightPusher: `pt2ctl weights push`, one UpdateConstantBuffer stream.
//
// Streamed push (default): the safetensors file is memory-mapped and parsed
// locally first (a malformed file never reaches the server), then the stream
// carries a header (version label, manifest of every tensor, and
// sha256_in_trailer), the tensor data in chunks, and a trailer with the
// SHA-256 of exactly the bytes sent, in order (what the server checks).
// Tensors are sent in the file's header order, each front to back; a helper
// thread hashes the mapped file while the chunks are sent, so hashing costs
// no extra pass before the first byte goes out. (Servers older than the
// trailer refuse it: INVALID_ARGUMENT "later ones are chunks".)
//
// Server-side push (--server-side): the header names a .safetensors file on
// the server (relative to its model repository) and no chunks follow. The
// server checks the SHA-256 against the file's bytes: pt2ctl sends the one
// given with --sha256, else that of a local copy at the same relative path if
// one is readable, else none.
//
// Thread-safety: not thread-safe; one push at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "pt2serve/v1/admin.pb.h"
#include "tools/pt2ctl/admin_client.h"
#include "tools/pt2ctl/outcome.h"

namespace pt2serve::ctl {

struct PushOptions {
  std::string model;
  // Local .safetensors file; with server_side, a path relative to the
  // server's model repository.
  std::string file;
  // Version label; empty = the file's stem ("seed7" for dir/seed7.safetensors).
  std::string version;
  uint64_t chunk_bytes = 2 << 20;
  bool server_side = false;
  // server_side only: checksum to send instead of hashing a local copy.
  std::string sha256;
  // Draw a progress bar on stderr.
  bool progress = false;
};

struct PushResult {
  pt2serve::v1::UpdateConstantBufferResponse response;  // from the server
  std::string version;
  std::string sha256;       // sent in the header ("" = none)
  uint64_t bytes_sent = 0;  // tensor data streamed (0 for server-side)
  size_t tensors = 0;       // tensors in the file (0 for server-side without local copy)
  size_t chunks = 0;        // chunk messages sent
  double seconds = 0;       // whole push, server staging included
};

// One chunk message: bytes [offset, offset + size) of tensor `tensor`.
struct ChunkRef {
  size_t tensor = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
  friend bool operator==(const ChunkRef&, const ChunkRef&) = default;
};

class WeightPusher {
 public:
  // `client` must outlive the pusher.
  explicit WeightPusher(AdminClient& client) : client_(client) {}

  Outcome Push(const PushOptions& options, PushResult* result);

  // --- pure helpers (unit-tested) ---
  // The stem of `path`: "seed7" for "/w/seed7.safetensors".
  static std::string DefaultVersion(const std::string& path);
  // One entry per tensor, in order: name, dtype, shape, byte_size.
  static StatusOr<pt2serve::v1::TensorManifest> BuildManifest(const std::vector<Tensor>& tensors);
  // The chunks in stream order: tensors in order, each split front to back
  // into pieces of at most `chunk_bytes` (> 0). Empty tensors get no chunk.
  static std::vector<ChunkRef> PlanChunks(const std::vector<Tensor>& tensors,
                                          uint64_t chunk_bytes);

 private:
  Outcome PushStream(const PushOptions& options, PushResult* result);
  Outcome PushServerSide(const PushOptions& options, PushResult* result);

  AdminClient& client_;
};

}  // namespace pt2serve::ctl
