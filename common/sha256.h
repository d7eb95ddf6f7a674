// SHA-256, incremental, for checking uploaded weights: a thin wrapper over
// OpenSSL's EVP digest (SHA extensions / AVX2 where the CPU has them,
// ~2 GB/s on the dev VM).
//
// Thread-safety: a Sha256 object is not thread-safe; use one per stream.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

struct evp_md_ctx_st;

namespace pt2serve {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void Reset();
  // Feeds `size` more bytes; any chunking gives the same digest.
  void Update(const void* data, size_t size);
  void Update(std::string_view data) { Update(data.data(), data.size()); }
  // Returns the digest of everything fed since the last Reset and resets.
  Digest Finish();
  // Lower-case hex of Finish().
  std::string FinishHex();

  // One-shot helpers.
  static std::string Hex(const Digest& digest);
  static std::string HexOf(const void* data, size_t size);
  static std::string HexOf(std::string_view data) { return HexOf(data.data(), data.size()); }
  // Lower-case hex digest of a file's bytes (read in large blocks).
  // NOT_FOUND if it is missing, INVALID_ARGUMENT if it cannot be read.
  static StatusOr<std::string> HexOfFile(const std::string& path);
  // True for 64 hex digits (either case).
  static bool IsHexDigest(std::string_view text);
  // A digest as given (operators paste either case), in lower case.
  static std::string Lower(std::string hex);
  // OK when `actual` (lower-case hex) is `expected` in any case, else
  // DATA_LOSS "checksum mismatch: expected E, got A (where)"; the
  // parenthesis only when `where` is not empty.
  static Status Verify(std::string_view expected, std::string_view actual,
                       std::string_view where = "");

 private:
  struct CtxDeleter {
    void operator()(evp_md_ctx_st* ctx) const;
  };
  std::unique_ptr<evp_md_ctx_st, CtxDeleter> ctx_;
};

}  // namespace pt2serve
