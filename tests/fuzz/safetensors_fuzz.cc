// Fuzz target: a whole .safetensors file (the weights files StageFromFile
// and config weights_file read) through SafetensorsFile::Parse. An accepted
// file must describe tensors that lie inside its data block, do not overlap
// and have exactly the bytes their shape and dtype need.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "common/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

using namespace pt2serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A copy of exactly `size` bytes, so ASan sees any read past the end
  // (libFuzzer's own buffer is sized exactly too; the replay driver's may not be).
  std::unique_ptr<std::byte[]> copy(new std::byte[size ? size : 1]);
  if (size) std::memcpy(copy.get(), data, size);
  const std::byte* bytes = copy.get();
  auto file = SafetensorsFile::Parse(bytes, size, nullptr);
  if (!file.ok()) {
    FUZZ_CHECK(file.status().code() == StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(size >= 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
  FUZZ_CHECK(header_len <= size - 8);
  const std::byte* block = bytes + 8 + header_len;
  const std::byte* end = bytes + size;
  std::vector<std::pair<const std::byte*, const std::byte*>> ranges;
  for (const Tensor& t : file->tensors) {
    auto expected = ByteSize(t.shape, t.dtype);
    FUZZ_CHECK(expected.ok() && *expected == t.nbytes);
    FUZZ_CHECK(!SafetensorsDTypeCode(t.dtype).empty());
    if (t.nbytes == 0) continue;
    FUZZ_CHECK(t.data >= block && t.data <= end && t.nbytes <= size_t(end - t.data));
    ranges.emplace_back(t.data, t.data + t.nbytes);
    FUZZ_CHECK(file->Find(t.name) != nullptr);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) FUZZ_CHECK(ranges[i - 1].second <= ranges[i].first);
  return 0;
}
