#include "tests/support/test_models.h"

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace pt2serve::testing {
namespace {

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

template <typename T>
void Append(const Tensor& t, std::vector<double>& out) {
  const size_t n = t.nbytes / sizeof(T);
  for (size_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, t.data + i * sizeof(T), sizeof(T));
    out.push_back(static_cast<double>(v));
  }
}

}  // namespace

namespace {
std::string DirFromEnv(const char* var, const char* fallback) {
  const char* dir = std::getenv(var);
  if (!dir || !*dir) dir = fallback;
  if (!*dir) {
    throw std::runtime_error(std::string(var) +
                             " is not set: run the tests through scripts/test.sh");
  }
  return dir;
}
}  // namespace

std::string ModelDir() { return DirFromEnv("PT2SERVE_MODEL_DIR", PT2SERVE_DEFAULT_MODEL_DIR); }

std::string FixturePath(const std::string& file) {
  return DirFromEnv("PT2SERVE_FIXTURE_DIR", PT2SERVE_DEFAULT_FIXTURE_DIR) + "/" + file;
}

std::string PlainPackagePath(const std::string& name) {
  return DirFromEnv("PT2SERVE_PLAIN_DIR", PT2SERVE_DEFAULT_PLAIN_DIR) + "/" + name + ".pt2";
}

std::string PackagePath(const std::string& name) { return ModelDir() + "/" + name + ".pt2"; }

std::string TempDir() {
  std::string pattern =
      (std::filesystem::temp_directory_path() / "pt2serve-test-XXXXXX").string();
  if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
  return pattern;
}

Reference LoadReference(const std::string& name) {
  return LoadReferenceFile(ModelDir() + "/" + name + ".reference.safetensors");
}

Reference LoadReferenceFile(const std::string& path) {
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) throw std::runtime_error(file.status().ToString());
  Reference ref;
  for (Tensor t : file->tensors) {
    if (t.name.starts_with("input.")) {
      t.name = t.name.substr(6);
      ref.inputs.push_back(std::move(t));
    } else if (t.name.starts_with("output.")) {
      t.name = t.name.substr(7);
      ref.outputs.push_back(std::move(t));
    }
  }
  return ref;
}

std::vector<double> ToDoubles(const Tensor& t) {
  std::vector<double> out;
  switch (t.dtype) {
    case DType::kBool:
    case DType::kUInt8: Append<uint8_t>(t, out); break;
    case DType::kInt8: Append<int8_t>(t, out); break;
    case DType::kInt16: Append<int16_t>(t, out); break;
    case DType::kInt32: Append<int32_t>(t, out); break;
    case DType::kInt64: Append<int64_t>(t, out); break;
    case DType::kFloat32: Append<float>(t, out); break;
    case DType::kFloat64: Append<double>(t, out); break;
    case DType::kFloat16:
    case DType::kBFloat16:
      for (size_t i = 0; i < t.nbytes / 2; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out.push_back(t.dtype == DType::kFloat16
                          ? HalfToFloat(h)
                          : std::bit_cast<float>(static_cast<uint32_t>(h) << 16));
      }
      break;
  }
  return out;
}

std::string CompareTensors(const Tensor& actual, const Tensor& expected, double rtol,
                           double atol) {
  if (actual.dtype != expected.dtype) {
    return "dtype " + std::string(DTypeName(actual.dtype)) + " != " +
           std::string(DTypeName(expected.dtype));
  }
  if (actual.shape != expected.shape) {
    return "shape " + ShapeToString(actual.shape) + " != " + ShapeToString(expected.shape);
  }
  auto a = ToDoubles(actual);
  auto e = ToDoubles(expected);
  if (a.size() != e.size()) return "element count differs";
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(std::abs(a[i] - e[i]) <= atol + rtol * std::abs(e[i]))) {
      return "element " + std::to_string(i) + ": " + std::to_string(a[i]) +
             " != " + std::to_string(e[i]);
    }
  }
  return "";
}

}  // namespace pt2serve::testing
