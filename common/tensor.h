// Torch-free tensor types shared by the runtime and the server layer.
//
// The server converts protobuf messages to and from these types; only the
// runtime (tensor_convert.cc) ever sees at::Tensor. This keeps LibTorch's
// bundled protobuf headers out of every translation unit that includes
// generated gRPC code.
#pragma once

#include <cstddef>
#include <climits>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pt2serve {

enum class DType {
  kBool,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFloat16,
  kBFloat16,
  kFloat32,
  kFloat64,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// Torch-style name: "float32", "int64", "bfloat16", ...
std::string_view DTypeName(DType dtype);
// Parses a torch-style name; also accepts "torch.float32".
std::optional<DType> DTypeFromName(std::string_view name);

using Shape = std::vector<int64_t>;
std::string ShapeToString(const Shape& shape);
// Product of dims. REQUIRES: all dims >= 0 and no overflow (see ByteSize).
int64_t NumElements(const Shape& shape);
// Bytes of a dense tensor of `shape` and `dtype`; INVALID_ARGUMENT for a
// negative dim or a size that does not fit in 63 bits (client-supplied
// shapes must go through this before anything is sized from them).
StatusOr<uint64_t> ByteSize(const Shape& shape, DType dtype);

// What is known about one dynamic dim (-1 in TensorSpec::shape).
struct DimRange {
  static constexpr int64_t kUnbounded = INT64_MAX;
  int64_t min = 0;
  int64_t max = kUnbounded;
  // Dims of a model's inputs that carry the same non-empty symbol must be
  // equal in a request (e.g. "seq" of token ids and of their mask).
  std::string symbol;
};

// One named input or output of a model. Dims of -1 are dynamic.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  Shape shape;
  // Empty, or one entry per dim of `shape`; only dynamic dims' entries are
  // checked (static dims must equal shape[i]).
  std::vector<DimRange> dims = {};
};

struct Signature {
  std::vector<TensorSpec> inputs;   // in the order the package's run() takes
  std::vector<TensorSpec> outputs;  // in the order run() returns
  // Upper bound of the dynamic leading (batch) dim; 0 when not batched.
  int64_t max_batch_size = 0;

  // Parses the JSON the exporter embeds as metadata "pt2serve.signature".
  static StatusOr<Signature> FromJson(std::string_view json);
  std::string ToJson() const;
  // Index of the input/output with that name, or -1.
  int InputIndex(std::string_view name) const;
  int OutputIndex(std::string_view name) const;
};

// A dense, row-major, little-endian tensor in host memory.
//
// Tensor does not copy: `data` points into memory kept alive by `owner`
// (a protobuf message, an at::Tensor, a std::vector...). Copies of a Tensor
// share that memory. The memory is never written through a Tensor.
struct Tensor {
  std::string name;
  DType dtype = DType::kFloat32;
  Shape shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::shared_ptr<const void> owner;
  // `data` is memory of the accelerator the tensor is bound for, not host
  // memory (only weight staging makes these: see devices/device_staging.h).
  // Never read through `data` on the host.
  bool on_device = false;

  // Makes a tensor that owns a copy of `bytes`.
  static Tensor Copy(std::string name, DType dtype, Shape shape,
                     const void* bytes, size_t nbytes);
  // Makes a tensor that owns `values`.
  template <typename T>
  static Tensor FromVector(std::string name, DType dtype, Shape shape,
                           std::vector<T> values) {
    auto holder = std::make_shared<std::vector<T>>(std::move(values));
    Tensor t;
    t.name = std::move(name);
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.data = reinterpret_cast<const std::byte*>(holder->data());
    t.nbytes = holder->size() * sizeof(T);
    t.owner = std::move(holder);
    return t;
  }

  template <typename T>
  const T* As() const { return reinterpret_cast<const T*>(data); }
};

// Checks `t` against `spec`: dtype, rank, fixed dims, the ranges of dynamic
// dims, and that nbytes equals the element count times the element size.
// Messages name the tensor and the dim.
Status ValidateAgainstSpec(const Tensor& t, const TensorSpec& spec);

// Checks that the request's inputs agree on every dim symbol the signature
// shares between inputs (TensorSpec::dims[i].symbol). `ordered[i]` is the
// tensor for sig.inputs[i]; each already passed ValidateAgainstSpec.
Status CheckSharedDims(const Signature& sig, const std::vector<const Tensor*>& ordered);

}  // namespace pt2serve
