#include "common/tensor.h"

#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

namespace pt2serve {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kBool, "bool", 1},         {DType::kUInt8, "uint8", 1},
    {DType::kInt8, "int8", 1},         {DType::kInt16, "int16", 2},
    {DType::kInt32, "int32", 4},       {DType::kInt64, "int64", 8},
    {DType::kFloat16, "float16", 2},   {DType::kBFloat16, "bfloat16", 2},
    {DType::kFloat32, "float32", 4},   {DType::kFloat64, "float64", 8},
};

const DTypeInfo& Info(DType dtype) {
  for (const auto& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  return kDTypes[0];  // unreachable: every enumerator is listed
}

// The integer at obj[key], or `fallback` when the key is absent or null.
// Integers only: nlohmann's get<int64_t>() casts a float, which is undefined
// behaviour when it is out of range (found by fuzzing).
StatusOr<int64_t> OptionalInt(const nlohmann::json& obj, const char* key, int64_t fallback,
                              const std::string& what) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return fallback;
  if (!obj[key].is_number_integer()) return InvalidArgument(what + " must be an integer");
  return obj[key].get<int64_t>();
}

StatusOr<TensorSpec> SpecFromJson(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("name") || !j.contains("dtype") ||
      !j.contains("shape")) {
    return InvalidArgument("tensor spec needs name, dtype and shape");
  }
  TensorSpec spec;
  spec.name = j["name"].get<std::string>();
  auto dtype = DTypeFromName(j["dtype"].get<std::string>());
  if (!dtype) {
    return InvalidArgument("tensor '" + spec.name + "': unsupported dtype " +
                           j["dtype"].get<std::string>());
  }
  spec.dtype = *dtype;
  // Integers only, as in OptionalInt.
  for (const auto& d : j["shape"]) {
    if (!d.is_number_integer()) {
      return InvalidArgument("tensor '" + spec.name + "': shape entries must be integers");
    }
    spec.shape.push_back(d.get<int64_t>());
  }
  if (j.contains("dims")) {
    const auto& dims = j["dims"];
    if (!dims.is_array() || dims.size() != spec.shape.size()) {
      return InvalidArgument("tensor '" + spec.name + "': 'dims' needs one entry per dim");
    }
    for (const auto& d : dims) {
      const std::string where = "tensor '" + spec.name + "': dims ";
      DimRange r;
      PT2_ASSIGN_OR_RETURN(r.min, OptionalInt(d, "min", 0, where + "min"));
      PT2_ASSIGN_OR_RETURN(r.max, OptionalInt(d, "max", DimRange::kUnbounded, where + "max"));
      r.symbol = d.value("symbol", std::string());  // throws (malformed) if d is no object
      if (r.min < 0 || r.max < r.min) {
        return InvalidArgument("tensor '" + spec.name + "': bad dim range " +
                               std::to_string(r.min) + ".." + std::to_string(r.max));
      }
      spec.dims.push_back(std::move(r));
    }
  }
  return spec;
}

nlohmann::json SpecToJson(const TensorSpec& spec) {
  nlohmann::json j = {{"name", spec.name},
                      {"dtype", std::string(DTypeName(spec.dtype))},
                      {"shape", spec.shape}};
  if (!spec.dims.empty()) {
    j["dims"] = nlohmann::json::array();
    for (const DimRange& r : spec.dims) {
      nlohmann::json d = {{"min", r.min}};
      if (r.max != DimRange::kUnbounded) d["max"] = r.max;
      if (!r.symbol.empty()) d["symbol"] = r.symbol;
      j["dims"].push_back(std::move(d));
    }
  }
  return j;
}

std::string RangeToString(const DimRange& r) {
  return std::to_string(r.min) + ".." +
         (r.max == DimRange::kUnbounded ? std::string("inf") : std::to_string(r.max));
}

}  // namespace

size_t DTypeSize(DType dtype) { return Info(dtype).size; }
std::string_view DTypeName(DType dtype) { return Info(dtype).name; }

std::optional<DType> DTypeFromName(std::string_view name) {
  if (name.starts_with("torch.")) name.remove_prefix(6);
  if (name == "half") return DType::kFloat16;
  if (name == "float") return DType::kFloat32;
  if (name == "double") return DType::kFloat64;
  if (name == "long") return DType::kInt64;
  for (const auto& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

std::string ShapeToString(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

StatusOr<Signature> Signature::FromJson(std::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgument("signature is not a JSON object");
  }
  Signature sig;
  try {
    for (const auto& in : j.value("inputs", nlohmann::json::array())) {
      PT2_ASSIGN_OR_RETURN(auto spec, SpecFromJson(in));
      sig.inputs.push_back(std::move(spec));
    }
    for (const auto& out : j.value("outputs", nlohmann::json::array())) {
      PT2_ASSIGN_OR_RETURN(auto spec, SpecFromJson(out));
      sig.outputs.push_back(std::move(spec));
    }
    PT2_ASSIGN_OR_RETURN(sig.max_batch_size,
                         OptionalInt(j, "max_batch_size", 0, "signature max_batch_size"));
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("malformed signature: ") + e.what());
  }
  if (sig.inputs.empty()) return InvalidArgument("signature has no inputs");
  if (sig.outputs.empty()) return InvalidArgument("signature has no outputs");
  return sig;
}

std::string Signature::ToJson() const {
  nlohmann::json j;
  j["inputs"] = nlohmann::json::array();
  j["outputs"] = nlohmann::json::array();
  for (const auto& s : inputs) j["inputs"].push_back(SpecToJson(s));
  for (const auto& s : outputs) j["outputs"].push_back(SpecToJson(s));
  j["max_batch_size"] = max_batch_size;
  return j.dump();
}

int Signature::InputIndex(std::string_view name) const {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

int Signature::OutputIndex(std::string_view name) const {
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

StatusOr<uint64_t> ByteSize(const Shape& shape, DType dtype) {
  int64_t bytes = static_cast<int64_t>(DTypeSize(dtype));
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgument("negative dim in shape " + ShapeToString(shape));
    if (__builtin_mul_overflow(bytes, d, &bytes)) {
      return InvalidArgument("shape " + ShapeToString(shape) + " is too large");
    }
  }
  return static_cast<uint64_t>(bytes);
}

Tensor Tensor::Copy(std::string name, DType dtype, Shape shape,
                    const void* bytes, size_t nbytes) {
  std::vector<std::byte> buf(nbytes);
  if (nbytes) std::memcpy(buf.data(), bytes, nbytes);
  return FromVector(std::move(name), dtype, std::move(shape), std::move(buf));
}

Status ValidateAgainstSpec(const Tensor& t, const TensorSpec& spec) {
  const std::string who = "input '" + spec.name + "'";
  if (t.dtype != spec.dtype) {
    return InvalidArgument(who + ": expected dtype " +
                           std::string(DTypeName(spec.dtype)) + ", got " +
                           std::string(DTypeName(t.dtype)));
  }
  if (t.shape.size() != spec.shape.size()) {
    return InvalidArgument(who + ": expected rank " +
                           std::to_string(spec.shape.size()) + " (shape " +
                           ShapeToString(spec.shape) + "), got shape " +
                           ShapeToString(t.shape));
  }
  for (size_t i = 0; i < spec.shape.size(); ++i) {
    if (t.shape[i] < 0) {
      return InvalidArgument(who + ": negative dim in shape " + ShapeToString(t.shape));
    }
    if (spec.shape[i] >= 0 && t.shape[i] != spec.shape[i]) {
      return InvalidArgument(who + ": expected shape " + ShapeToString(spec.shape) +
                             ", got " + ShapeToString(t.shape) + " (dim " + std::to_string(i) +
                             " must be " + std::to_string(spec.shape[i]) + ")");
    }
    if (spec.shape[i] < 0 && i < spec.dims.size()) {
      const DimRange& r = spec.dims[i];
      if (t.shape[i] < r.min || t.shape[i] > r.max) {
        return InvalidArgument(who + ": dim " + std::to_string(i) +
                               (r.symbol.empty() ? "" : " ('" + r.symbol + "')") + " is " +
                               std::to_string(t.shape[i]) + ", outside the model's range " +
                               RangeToString(r) + " (got shape " + ShapeToString(t.shape) +
                               ")");
      }
    }
  }
  auto size = ByteSize(t.shape, t.dtype);
  if (!size.ok()) return size.status().WithPrefix(who);
  const size_t expected = *size;
  if (t.nbytes != expected) {
    return InvalidArgument(who + ": shape " + ShapeToString(t.shape) + " of " +
                           std::string(DTypeName(t.dtype)) + " needs " +
                           std::to_string(expected) + " bytes, got " +
                           std::to_string(t.nbytes));
  }
  return Status::Ok();
}

Status CheckSharedDims(const Signature& sig, const std::vector<const Tensor*>& ordered) {
  struct First {
    size_t input;
    size_t dim;
  };
  std::map<std::string, First> first;
  for (size_t i = 0; i < sig.inputs.size() && i < ordered.size(); ++i) {
    const TensorSpec& spec = sig.inputs[i];
    for (size_t d = 0; d < spec.dims.size() && d < spec.shape.size(); ++d) {
      if (spec.shape[d] >= 0 || spec.dims[d].symbol.empty()) continue;
      auto [it, inserted] = first.try_emplace(spec.dims[d].symbol, First{i, d});
      if (inserted) continue;
      const Tensor& a = *ordered[it->second.input];
      const Tensor& b = *ordered[i];
      if (a.shape[it->second.dim] != b.shape[d]) {
        return InvalidArgument(
            "inputs must agree on dim '" + spec.dims[d].symbol + "': input '" +
            sig.inputs[it->second.input].name + "' dim " + std::to_string(it->second.dim) +
            " is " + std::to_string(a.shape[it->second.dim]) + ", input '" + spec.name +
            "' dim " + std::to_string(d) + " is " + std::to_string(b.shape[d]));
      }
    }
  }
  return Status::Ok();
}

}  // namespace pt2serve
