#include "common/safetensors.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <vector>

#include "common/sha256.h"
#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::testing;

namespace {
std::string Build(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\x01');
}
StatusOr<SafetensorsFile> ParseString(const std::string& s) {
  auto owner = std::make_shared<std::string>(s);
  return SafetensorsFile::Parse(reinterpret_cast<const std::byte*>(owner->data()), owner->size(),
                                owner);
}
}  // namespace

TEST_CASE("parses tensors and metadata", "[safetensors]") {
  auto f = ParseString(Build(
      R"({"__metadata__":{"version":"v2"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}})",
      22));
  REQUIRE(f.ok());
  REQUIRE(f->tensors.size() == 2);
  CHECK(f->metadata.at("version") == "v2");
  CHECK(f->Find("a")->shape == Shape{2, 2});
  CHECK(f->Find("b")->dtype == DType::kBFloat16);
  CHECK(f->Find("b")->nbytes == 6);
  CHECK(f->Find("c") == nullptr);
}

TEST_CASE("malformed files are rejected with the reason", "[safetensors]") {
  CHECK_THAT(ParseString("abc").status().message(), Catch::Contains("shorter than 8 bytes"));
  CHECK_THAT(ParseString(Build("{", 0)).status().message(), Catch::Contains("not a JSON object"));
  std::string huge = Build("{}", 0);
  huge[0] = '\x7f';
  CHECK_THAT(ParseString(huge).status().message(), Catch::Contains("exceeds the file size"));
  CHECK_THAT(ParseString(Build(R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8))
                 .status().message(),
             Catch::Contains("unsupported dtype C64"));
  CHECK_THAT(ParseString(Build(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})", 16))
                 .status().message(),
             Catch::Contains("outside the data block"));
  CHECK_THAT(ParseString(Build(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16))
                 .status().message(),
             Catch::Contains("do not match shape"));
  CHECK(SafetensorsFile::Open("/nonexistent.safetensors").status().code() ==
        StatusCode::kNotFound);
  // Fuzz finding: floats were cast to integers (undefined behaviour when out of range).
  CHECK_THAT(ParseString(Build(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4))
                 .status().message(),
             Catch::Contains("shape entries must be integers"));
  CHECK_THAT(ParseString(Build(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1e40]}})", 4))
                 .status().message(),
             Catch::Contains("data_offsets must be non-negative integers"));
}

TEST_CASE("reads the exporter's weight files", "[safetensors]") {
  auto f = SafetensorsFile::Open(ModelDir() + "/mlp.weights.safetensors");
  REQUIRE(f.ok());
  const Tensor* w = f->Find("fc1.weight");
  REQUIRE(w != nullptr);
  CHECK(w->shape == Shape{64, 16});
  CHECK(w->dtype == DType::kFloat32);
}

TEST_CASE("tensors whose data ranges overlap are rejected, naming both", "[safetensors]") {
  // b's bytes [8, 24) share [8, 16) with a's [0, 16).
  auto overlapping = ParseString(
      Build(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
            24));
  REQUIRE_FALSE(overlapping.ok());
  CHECK(overlapping.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(overlapping.status().message(), Catch::Contains("'a'") && Catch::Contains("'b'") &&
                                                 Catch::Contains("overlap"));
  // The same range twice (an alias) is an overlap too.
  auto aliased = ParseString(
      Build(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
            16));
  CHECK(aliased.status().code() == StatusCode::kInvalidArgument);
  // Adjacent ranges, out of header order, and empty tensors anywhere are fine.
  auto adjacent = ParseString(
      Build(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},)"
            R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
            24));
  CHECK(adjacent.ok());
}

TEST_CASE("CopyTensors copies every tensor and hashes the whole file in one pass",
          "[safetensors]") {
  // Tensors that straddle the 8 MiB blocks of the pipeline, an empty one, and
  // bytes after the last tensor (hashed, never copied).
  constexpr size_t kA = 12, kB = 10485764, kC = 20971520, kTail = 7;
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"F32","shape":[2621441],"data_offsets":[12,10485776]},)"
      R"("e":{"dtype":"F32","shape":[0],"data_offsets":[10485776,10485776]},)"
      R"("c":{"dtype":"F32","shape":[5242880],"data_offsets":[10485776,31457296]}})";
  std::string image = Build(header, kA + kB + kC + kTail);
  const size_t data_start = 8 + header.size();
  for (size_t i = data_start; i < image.size(); ++i) {
    image[i] = static_cast<char>((i * 131 + i / 4093) & 0xff);
  }
  auto f = ParseString(image);
  REQUIRE(f.ok());
  REQUIRE(f->size == image.size());
  std::vector<std::vector<std::byte>> copies;
  std::vector<std::byte*> dest;
  for (const Tensor& t : f->tensors) {
    copies.emplace_back(t.nbytes + 1, std::byte{0x5a});  // +1: nothing written past the end
    dest.push_back(copies.back().data());
  }
  CHECK(f->CopyTensors(dest, /*with_sha256=*/true) == Sha256::HexOf(image.data(), image.size()));
  for (size_t i = 0; i < f->tensors.size(); ++i) {
    const Tensor& t = f->tensors[i];
    INFO(t.name);
    CHECK(std::memcmp(copies[i].data(), t.data, t.nbytes) == 0);
    CHECK(copies[i][t.nbytes] == std::byte{0x5a});
  }
  CHECK(f->CopyTensors(dest, /*with_sha256=*/false).empty());
}
