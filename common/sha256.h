// SHA-256 (FIPS 180-4), incremental, for checking uploaded weights.
//
// Small and dependency-free on purpose: pt2serve only hashes weight uploads
// and files, so a portable implementation (~400 MB/s) is enough.
// Thread-safety: a Sha256 object is not thread-safe; use one per stream.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pt2serve {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256() { Reset(); }
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
  // True for 64 hex digits (either case).
  static bool IsHexDigest(std::string_view text);

 private:
  void Compress(const uint8_t* block);

  std::array<uint32_t, 8> state_{};
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;       // bytes in buffer_
  uint64_t total_bytes_ = 0;  // message length so far
};

}  // namespace pt2serve
