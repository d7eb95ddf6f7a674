#include "common/safetensors.h"

#include "common/sha256.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_pipeline.h>

namespace pt2serve {
namespace {

struct Code {
  DType dtype;
  std::string_view code;
};
constexpr Code kCodes[] = {
    {DType::kBool, "BOOL"}, {DType::kUInt8, "U8"},   {DType::kInt8, "I8"},
    {DType::kInt16, "I16"}, {DType::kInt32, "I32"},  {DType::kInt64, "I64"},
    {DType::kFloat16, "F16"}, {DType::kBFloat16, "BF16"}, {DType::kFloat32, "F32"},
    {DType::kFloat64, "F64"},
};

// Owns one read-only mapping of a whole file.
struct Mapping {
  void* addr = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (addr != MAP_FAILED) munmap(addr, size);
  }
};

// Every byte of the data block belongs to at most one tensor: overlapping
// ranges would make two constants alias (and an upload of the file write one
// tensor's bytes twice). Empty tensors occupy nothing.
Status CheckDisjoint(const std::vector<Tensor>& tensors, const std::byte* block) {
  std::vector<const Tensor*> by_offset;
  for (const Tensor& t : tensors) {
    if (t.nbytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Tensor* a, const Tensor* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Tensor& prev = *by_offset[i - 1];
    const Tensor& cur = *by_offset[i];
    if (prev.data + prev.nbytes <= cur.data) continue;
    const auto range = [block](const Tensor& t) {
      return "[" + std::to_string(t.data - block) + ", " +
             std::to_string(t.data - block + static_cast<std::ptrdiff_t>(t.nbytes)) + ")";
    };
    return InvalidArgument("tensors '" + prev.name + "' " + range(prev) + " and '" + cur.name +
                           "' " + range(cur) + " have overlapping data offsets");
  }
  return Status::Ok();
}

}  // namespace

std::string_view SafetensorsDTypeCode(DType dtype) {
  for (const auto& c : kCodes) {
    if (c.dtype == dtype) return c.code;
  }
  return "";
}

StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("weights file not found: " + path);
    return InvalidArgument("cannot open " + path + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(path + " is not a regular file");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size > 0) {
    mapping->addr = mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
  }
  ::close(fd);
  if (mapping->size > 0 && mapping->addr == MAP_FAILED) {
    return Internal("cannot map " + path + ": " + std::strerror(errno));
  }
  const auto* bytes = static_cast<const std::byte*>(mapping->size ? mapping->addr : nullptr);
  auto parsed = Parse(bytes, mapping->size, mapping);
  if (!parsed.ok()) return parsed.status().WithPrefix(path);
  return parsed;
}

StatusOr<SafetensorsFile> SafetensorsFile::Parse(const std::byte* data, size_t size,
                                                 std::shared_ptr<const void> owner) {
  if (size < 8) return InvalidArgument("not a safetensors file (shorter than 8 bytes)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(data[i]);
  if (header_len > size - 8) {
    return InvalidArgument("safetensors header length " + std::to_string(header_len) +
                           " exceeds the file size " + std::to_string(size));
  }
  auto header = nlohmann::json::parse(reinterpret_cast<const char*>(data) + 8,
                                      reinterpret_cast<const char*>(data) + 8 + header_len,
                                      nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return InvalidArgument("safetensors header is not a JSON object");
  }
  const std::byte* block = data + 8 + header_len;
  const size_t block_size = size - 8 - header_len;
  SafetensorsFile file;
  try {
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        for (const auto& [k, v] : entry.items()) {
          file.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
        }
        continue;
      }
      Tensor t;
      t.name = name;
      const std::string code = entry.at("dtype").get<std::string>();
      bool known = false;
      for (const auto& c : kCodes) {
        if (c.code == code) {
          t.dtype = c.dtype;
          known = true;
        }
      }
      if (!known) return InvalidArgument("tensor '" + name + "': unsupported dtype " + code);
      // Integers only: nlohmann's get<>() casts a float to an integer type,
      // which is undefined behaviour when it is out of range (found by fuzzing).
      for (const auto& d : entry.at("shape")) {
        if (!d.is_number_integer()) {
          return InvalidArgument("tensor '" + name + "': shape entries must be integers");
        }
        t.shape.push_back(d.get<int64_t>());
      }
      const auto& offsets = entry.at("data_offsets");
      if (!offsets.at(0).is_number_unsigned() || !offsets.at(1).is_number_unsigned()) {
        return InvalidArgument("tensor '" + name + "': data_offsets must be non-negative integers");
      }
      const uint64_t begin = offsets.at(0).get<uint64_t>();
      const uint64_t end = offsets.at(1).get<uint64_t>();
      if (begin > end || end > block_size) {
        return InvalidArgument("tensor '" + name + "': data offsets [" + std::to_string(begin) +
                               ", " + std::to_string(end) + ") outside the data block of " +
                               std::to_string(block_size) + " bytes");
      }
      for (int64_t d : t.shape) {
        if (d < 0) return InvalidArgument("tensor '" + name + "': negative dim");
      }
      t.nbytes = end - begin;
      auto expected = ByteSize(t.shape, t.dtype);
      if (!expected.ok()) return expected.status().WithPrefix("tensor '" + name + "'");
      if (t.nbytes != *expected) {
        return InvalidArgument("tensor '" + name + "': " + std::to_string(t.nbytes) +
                               " bytes do not match shape " + ShapeToString(t.shape) + " of " +
                               code);
      }
      t.data = block + begin;
      t.owner = owner;
      file.tensors.push_back(std::move(t));
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("malformed safetensors header: ") + e.what());
  }
  PT2_RETURN_IF_ERROR(CheckDisjoint(file.tensors, block));
  file.bytes = data;
  file.size = size;
  file.owner = std::move(owner);
  return file;
}

std::string SafetensorsFile::CopyTensors(const std::vector<std::byte*>& dest,
                                         bool with_sha256) const {
  auto copied = CopyTensors(
      [&](size_t i, size_t offset, const std::byte* src, size_t n) {
        std::memcpy(dest[i] + offset, src, n);
        return Status::Ok();
      },
      with_sha256);
  return copied.ok() ? *copied : std::string();  // memcpy cannot fail
}

StatusOr<std::string> SafetensorsFile::CopyTensors(const PieceCopy& copy, bool with_sha256,
                                                   size_t block_bytes) const {
  block_bytes = std::max<size_t>(block_bytes, 1);
  struct Range {
    size_t begin = 0;
    size_t end = 0;
  };
  Sha256 hasher;
  size_t next = 0;
  std::mutex error_mu;
  Status error;                     // the first failed copy; guarded by error_mu
  std::atomic<bool> failed{false};  // stops the pass
  // Tokens bound the blocks in flight: enough for the copy threads to run
  // ahead of the hash, few enough to keep them in the CPU caches' reach.
  const size_t tokens = 2 * static_cast<size_t>(oneapi::tbb::info::default_concurrency()) + 2;
  oneapi::tbb::parallel_pipeline(
      tokens,
      oneapi::tbb::make_filter<void, Range>(
          oneapi::tbb::filter_mode::serial_in_order,
          [&](oneapi::tbb::flow_control& fc) -> Range {
            if (next >= size || failed.load()) {
              fc.stop();
              return {};
            }
            Range r{next, std::min(size, next + block_bytes)};
            next = r.end;
            return r;
          }) &
          oneapi::tbb::make_filter<Range, Range>(
              oneapi::tbb::filter_mode::parallel,
              [&](Range r) {
                for (size_t i = 0; i < tensors.size() && !failed.load(); ++i) {
                  const size_t t_begin = static_cast<size_t>(tensors[i].data - bytes);
                  const size_t t_end = t_begin + tensors[i].nbytes;
                  const size_t from = std::max(r.begin, t_begin);
                  const size_t to = std::min(r.end, t_end);
                  if (from >= to) continue;
                  Status s = copy(i, from - t_begin, bytes + from, to - from);
                  if (!s.ok()) {
                    std::lock_guard lock(error_mu);
                    if (!failed.exchange(true)) error = std::move(s);
                  }
                }
                return r;
              }) &
          oneapi::tbb::make_filter<Range, void>(
              oneapi::tbb::filter_mode::serial_in_order, [&](Range r) {
                if (with_sha256 && !failed.load()) hasher.Update(bytes + r.begin, r.end - r.begin);
              }));
  if (failed.load()) return error;
  return with_sha256 ? hasher.FinishHex() : std::string();
}

const Tensor* SafetensorsFile::Find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace pt2serve
