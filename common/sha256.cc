#include "common/sha256.h"

#include <fcntl.h>
#include <oneapi/tbb/parallel_pipeline.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <stdexcept>
#include <vector>

namespace pt2serve {
namespace {

// OpenSSL fails these calls only when out of memory or misconfigured (no
// SHA-256 provider): nothing a caller could recover from per call.
void Check(int ok, const char* what) {
  if (ok != 1) throw std::runtime_error(std::string("OpenSSL SHA-256: ") + what + " failed");
}

}  // namespace

void Sha256::CtxDeleter::operator()(evp_md_ctx_st* ctx) const { EVP_MD_CTX_free(ctx); }

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_) throw std::bad_alloc();
  Reset();
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::Reset() { Check(EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr), "init"); }

void Sha256::Update(const void* data, size_t size) {
  if (size == 0) return;
  Check(EVP_DigestUpdate(ctx_.get(), data, size), "update");
}

Sha256::Digest Sha256::Finish() {
  Digest out;
  unsigned int len = 0;
  Check(EVP_DigestFinal_ex(ctx_.get(), out.data(), &len), "final");
  Reset();
  return out;
}

std::string Sha256::FinishHex() { return Hex(Finish()); }

std::string Sha256::Hex(const Digest& digest) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(64);
  for (uint8_t b : digest) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

std::string Sha256::HexOf(const void* data, size_t size) {
  Sha256 h;
  h.Update(data, size);
  return h.FinishHex();
}

StatusOr<std::string> Sha256::HexOfFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("file not found: " + path);
    return InvalidArgument("cannot open " + path + ": " + std::strerror(errno));
  }
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  // Reading and hashing overlap: a oneTBB pipeline reads the next 8 MiB
  // chunk (syscall + page-cache copy, ~20% of the time of hashing it) on one
  // thread while another hashes the previous one. Both stages are serial and
  // in order; kChunks bounds the buffers in flight (and the memory: 24 MiB).
  constexpr size_t kChunkBytes = 8 << 20;
  constexpr size_t kChunks = 3;
  std::vector<std::vector<std::byte>> buffers(kChunks, std::vector<std::byte>(kChunkBytes));
  struct Chunk {
    std::vector<std::byte>* buffer;
    size_t size;
  };
  Sha256 hasher;
  std::string error;  // written by the read stage only
  size_t next = 0;
  oneapi::tbb::parallel_pipeline(
      kChunks,
      oneapi::tbb::make_filter<void, Chunk>(
          oneapi::tbb::filter_mode::serial_in_order,
          [&](oneapi::tbb::flow_control& fc) -> Chunk {
            // At most kChunks chunks are alive at once, so buffer `next` is
            // free again: its previous chunk has left the hash stage.
            std::vector<std::byte>* buffer = &buffers[next++ % kChunks];
            while (true) {
              const ssize_t n = ::read(fd, buffer->data(), buffer->size());
              if (n > 0) return {buffer, static_cast<size_t>(n)};
              if (n < 0 && errno == EINTR) continue;
              if (n < 0) error = std::strerror(errno);
              fc.stop();
              return {buffer, 0};
            }
          }) &
          oneapi::tbb::make_filter<Chunk, void>(
              oneapi::tbb::filter_mode::serial_in_order,
              [&](const Chunk& chunk) { hasher.Update(chunk.buffer->data(), chunk.size); }));
  ::close(fd);
  if (!error.empty()) return InvalidArgument("error reading " + path + ": " + error);
  return hasher.FinishHex();
}

std::string Sha256::Lower(std::string hex) {
  for (char& c : hex) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return hex;
}

Status Sha256::Verify(std::string_view expected, std::string_view actual,
                      std::string_view where) {
  const std::string want = Lower(std::string(expected));
  if (actual == want) return Status::Ok();
  std::string message = "checksum mismatch: expected " + want + ", got " + std::string(actual);
  if (!where.empty()) message += " (" + std::string(where) + ")";
  return DataLoss(std::move(message));
}

bool Sha256::IsHexDigest(std::string_view text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    const bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (!hex) return false;
  }
  return true;
}

}  // namespace pt2serve
