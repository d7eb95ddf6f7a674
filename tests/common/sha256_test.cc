#include "common/sha256.h"
#include "common/background_sha256.h"

#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

using namespace pt2serve;

// Reference digests: FIPS 180-4 examples and `sha256sum`.
TEST_CASE("SHA-256 of the standard test vectors", "[sha256]") {
  CHECK(Sha256::HexOf("") ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(Sha256::HexOf("abc") ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(Sha256::HexOf("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  CHECK(Sha256::HexOf(million) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("SHA-256 does not depend on how the input is chunked", "[sha256]") {
  std::string data(100000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131) ^ (i >> 7));
  const std::string whole = Sha256::HexOf(data);
  for (size_t step : {1, 63, 64, 65, 4096, 99999}) {
    Sha256 h;
    for (size_t off = 0; off < data.size(); off += step) {
      h.Update(data.data() + off, std::min(step, data.size() - off));
    }
    CHECK(h.FinishHex() == whole);
  }
}

TEST_CASE("SHA-256 Finish resets for the next message", "[sha256]") {
  Sha256 h;
  h.Update("abc");
  CHECK(h.FinishHex() == Sha256::HexOf("abc"));
  h.Update("");
  CHECK(h.FinishHex() == Sha256::HexOf(""));
  h.Update("ab");
  h.Reset();
  h.Update("abc");
  CHECK(h.FinishHex() == Sha256::HexOf("abc"));
  Sha256 moved = std::move(h);
  moved.Update("abc");
  CHECK(moved.FinishHex() == Sha256::HexOf("abc"));
}

TEST_CASE("IsHexDigest accepts 64 hex digits only", "[sha256]") {
  CHECK(Sha256::IsHexDigest(std::string(64, 'a')));
  CHECK(Sha256::IsHexDigest(std::string(64, 'F')));
  CHECK_FALSE(Sha256::IsHexDigest(std::string(63, 'a')));
  CHECK_FALSE(Sha256::IsHexDigest(std::string(63, 'a') + "g"));
}

TEST_CASE("BackgroundSha256 gives the digest of the queued ranges in order", "[sha256]") {
  std::string data(3 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + (i >> 11));
  const std::string whole = Sha256::HexOf(data);
  BackgroundSha256 bg;
  CHECK(bg.FinishHex() == Sha256::HexOf(""));  // nothing queued
  // Contiguous chunks (merged), then a gap-free restart from a copy (not merged).
  const std::string copy = data.substr(2 << 20);
  for (size_t off = 0; off < (2u << 20); off += 65536) bg.Update(data.data() + off, 65536);
  bg.Update(copy.data(), copy.size());
  CHECK(bg.FinishHex() == whole);
  CHECK(bg.bytes_hashed() == 0);  // a new stream starts after FinishHex
  bg.Update(data.data(), 3);
  CHECK(bg.FinishHex() == Sha256::HexOf("\0\a\x0e", 3));
}

TEST_CASE("BackgroundSha256::Abandon lets go of the queued ranges before it returns",
          "[sha256]") {
  // The ranges live in their own mapping, unmapped right after Abandon: a
  // helper still reading them would crash the test (an abandoned upload used
  // to free its buffers under the helper's feet: SIGSEGV in libcrypto).
  constexpr size_t kBytes = 256 << 20;
  BackgroundSha256 bg;
  for (int round = 0; round < 3; ++round) {
    void* mem = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(mem != MAP_FAILED);
    std::memset(mem, 'y', kBytes);
    const auto* bytes = static_cast<const std::byte*>(mem);
    for (size_t off = 0; off < kBytes; off += 1 << 20) bg.Update(bytes + off, 1 << 20);
    while (bg.bytes_hashed() == 0) std::this_thread::yield();  // the helper is at work
    bg.Abandon();
    CHECK(bg.bytes_hashed() < kBytes);  // it stopped early
    ::munmap(mem, kBytes);
  }
  // A new stream afterwards, unaffected by the abandoned ones.
  bg.Update("abc", 3);
  CHECK(bg.FinishHex() == Sha256::HexOf("abc"));
}

TEST_CASE("BackgroundSha256 can be destroyed with bytes still queued", "[sha256]") {
  std::string data(8 << 20, 'x');
  auto bg = std::make_unique<BackgroundSha256>();
  for (int i = 0; i < 4; ++i) bg->Update(data.data(), data.size());
  bg.reset();  // joins without hashing the rest, and without touching freed memory
  SUCCEED();
}

TEST_CASE("HexOfFile hashes the whole file, across and at chunk boundaries", "[sha256]") {
  // The file is read in 8 MiB chunks by a pipeline with 3 buffers: cover an
  // empty file, exact chunk multiples and more chunks than buffers.
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("pt2serve_sha256_" + std::to_string(::getpid()))).string();
  constexpr size_t kChunk = 8 << 20;
  for (size_t size : {size_t{0}, size_t{1}, kChunk, kChunk + 1, 4 * kChunk + 5}) {
    std::string bytes(size, '\0');
    for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 131 + i / 4093) & 0xff);
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(size));
    auto hex = Sha256::HexOfFile(path);
    REQUIRE(hex.ok());
    CHECK(*hex == Sha256::HexOf(bytes.data(), bytes.size()));
  }
  std::filesystem::remove(path);
  auto missing = Sha256::HexOfFile(path);
  CHECK(missing.status().code() == StatusCode::kNotFound);
  auto directory = Sha256::HexOfFile(std::filesystem::temp_directory_path().string());
  CHECK(directory.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(directory.status().message(), Catch::Contains("error reading"));
}
