#include "server/tensor_codec.h"

#include <cstring>

#include "common/limits.h"

namespace pt2serve::server {
namespace {

struct WireType {
  DType dtype;
  std::string_view kserve;
  inference::DataType triton;
  pt2serve::v1::DataType proto;
};

constexpr WireType kWireTypes[] = {
    {DType::kBool, "BOOL", inference::TYPE_BOOL, pt2serve::v1::DT_BOOL},
    {DType::kUInt8, "UINT8", inference::TYPE_UINT8, pt2serve::v1::DT_UINT8},
    {DType::kInt8, "INT8", inference::TYPE_INT8, pt2serve::v1::DT_INT8},
    {DType::kInt16, "INT16", inference::TYPE_INT16, pt2serve::v1::DT_INT16},
    {DType::kInt32, "INT32", inference::TYPE_INT32, pt2serve::v1::DT_INT32},
    {DType::kInt64, "INT64", inference::TYPE_INT64, pt2serve::v1::DT_INT64},
    {DType::kFloat16, "FP16", inference::TYPE_FP16, pt2serve::v1::DT_FLOAT16},
    {DType::kBFloat16, "BF16", inference::TYPE_BF16, pt2serve::v1::DT_BFLOAT16},
    {DType::kFloat32, "FP32", inference::TYPE_FP32, pt2serve::v1::DT_FLOAT32},
    {DType::kFloat64, "FP64", inference::TYPE_FP64, pt2serve::v1::DT_FLOAT64},
};

const WireType& Wire(DType dtype) {
  for (const auto& w : kWireTypes) {
    if (w.dtype == dtype) return w;
  }
  return kWireTypes[0];  // unreachable: every DType is listed
}

// More dims than any model takes; bounds what an error message can echo.
constexpr int kMaxRank = 32;

Status ReadShape(const std::string& name, const google::protobuf::RepeatedField<int64_t>& dims,
                 Shape& shape) {
  if (dims.size() > kMaxRank) {
    return InvalidArgument("input '" + name + "': shape has " + std::to_string(dims.size()) +
                           " dims (at most " + std::to_string(kMaxRank) + ")");
  }
  shape.assign(dims.begin(), dims.end());
  for (int64_t d : shape) {
    if (d < 0) {
      return InvalidArgument("input '" + name + "': shape " + ShapeToString(shape) +
                             " has a negative dimension");
    }
  }
  return Status::Ok();
}

// Packs repeated typed values into a buffer of `dtype` elements.
template <typename Wire, typename Elem>
Tensor Pack(const std::string& name, DType dtype, Shape shape,
            const google::protobuf::RepeatedField<Wire>& values) {
  std::vector<Elem> packed(values.begin(), values.end());
  return Tensor::FromVector(name, dtype, std::move(shape), std::move(packed));
}

// The name of the one typed field `contents` uses: INVALID_ARGUMENT when it
// uses several, or one that does not belong to `dtype`.
Status CheckTypedField(const inference::ModelInferRequest::InferInputTensor& in, DType dtype) {
  const auto& c = in.contents();
  const std::pair<const char*, int> used[] = {
      {"bool_contents", c.bool_contents_size()},   {"int_contents", c.int_contents_size()},
      {"int64_contents", c.int64_contents_size()}, {"uint_contents", c.uint_contents_size()},
      {"uint64_contents", c.uint64_contents_size()}, {"fp32_contents", c.fp32_contents_size()},
      {"fp64_contents", c.fp64_contents_size()},   {"bytes_contents", c.bytes_contents_size()}};
  std::string first;
  for (const auto& [field, count] : used) {
    if (count == 0) continue;
    if (!first.empty()) {
      return InvalidArgument("input '" + in.name() + "' sets both " + first + " and " + field +
                             "; a tensor's values go in one field");
    }
    first = field;
  }
  const char* want = nullptr;
  switch (dtype) {
    case DType::kBool: want = "bool_contents"; break;
    case DType::kInt8: case DType::kInt16: case DType::kInt32: want = "int_contents"; break;
    case DType::kInt64: want = "int64_contents"; break;
    case DType::kUInt8: want = "uint_contents"; break;
    case DType::kFloat32: want = "fp32_contents"; break;
    case DType::kFloat64: want = "fp64_contents"; break;
    case DType::kFloat16: case DType::kBFloat16: break;
  }
  if (!first.empty() && want && first != want) {
    return InvalidArgument("input '" + in.name() + "' is " + std::string(KServeDatatype(dtype)) +
                           " but sets " + first + " (want " + want + ")");
  }
  return Status::Ok();
}

// Tensor-level parameters: pt2serve implements none (no shared memory, no
// classification outputs), so any is refused rather than ignored.
Status CheckTensorParameters(
    std::string_view what, const std::string& name,
    const google::protobuf::Map<std::string, inference::InferParameter>& parameters) {
  if (parameters.empty()) return Status::Ok();
  const std::string key = parameters.begin()->first;
  const bool shm = key.starts_with("shared_memory");
  return InvalidArgument(std::string(what) + " '" + name + "': parameter '" + Printable(key) +
                         "' is not supported" +
                         (shm ? " (pt2serve has no shared-memory extension; send the data in "
                                "the request)"
                              : key == "classification" ? " (no classification extension)" : ""));
}

// Decodes `contents` for one input; the element count is checked later
// against the shape (ValidateAgainstSpec compares byte sizes).
StatusOr<Tensor> DecodeTyped(const inference::ModelInferRequest::InferInputTensor& in,
                             DType dtype, Shape shape) {
  const auto& c = in.contents();
  const std::string& name = in.name();
  switch (dtype) {
    case DType::kBool: return Pack<bool, uint8_t>(name, dtype, shape, c.bool_contents());
    case DType::kInt8: return Pack<int32_t, int8_t>(name, dtype, shape, c.int_contents());
    case DType::kInt16: return Pack<int32_t, int16_t>(name, dtype, shape, c.int_contents());
    case DType::kInt32: return Pack<int32_t, int32_t>(name, dtype, shape, c.int_contents());
    case DType::kInt64: return Pack<int64_t, int64_t>(name, dtype, shape, c.int64_contents());
    case DType::kUInt8: return Pack<uint32_t, uint8_t>(name, dtype, shape, c.uint_contents());
    case DType::kFloat32: return Pack<float, float>(name, dtype, shape, c.fp32_contents());
    case DType::kFloat64: return Pack<double, double>(name, dtype, shape, c.fp64_contents());
    case DType::kFloat16:
    case DType::kBFloat16:
      break;
  }
  return InvalidArgument("input '" + name + "': " + std::string(KServeDatatype(dtype)) +
                         " data must be sent in raw_input_contents (there is no typed field)");
}

Tensor View(const std::string& name, DType dtype, Shape shape, const std::string& bytes) {
  Tensor t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = reinterpret_cast<const std::byte*>(bytes.data());
  t.nbytes = bytes.size();
  return t;  // no owner: the request message outlives the call
}

}  // namespace

std::string_view KServeDatatype(DType dtype) { return Wire(dtype).kserve; }
inference::DataType TritonDataType(DType dtype) { return Wire(dtype).triton; }
pt2serve::v1::DataType ToProtoDType(DType dtype) { return Wire(dtype).proto; }

StatusOr<DType> DTypeFromKServe(std::string_view datatype) {
  for (const auto& w : kWireTypes) {
    if (w.kserve == datatype) return w.dtype;
  }
  return InvalidArgument("unsupported datatype '" + Printable(datatype) + "'");
}

StatusOr<DType> FromProtoDType(pt2serve::v1::DataType dtype) {
  for (const auto& w : kWireTypes) {
    if (w.proto == dtype) return w.dtype;
  }
  return InvalidArgument("unsupported dtype " + std::to_string(static_cast<int>(dtype)));
}

StatusOr<std::vector<Tensor>> DecodeKServeInputs(const inference::ModelInferRequest& request) {
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != request.inputs_size()) {
    return InvalidArgument("raw_input_contents has " +
                           std::to_string(request.raw_input_contents_size()) +
                           " entries but the request has " +
                           std::to_string(request.inputs_size()) + " inputs");
  }
  std::vector<Tensor> tensors;
  tensors.reserve(request.inputs_size());
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& in = request.inputs(i);
    auto dtype = DTypeFromKServe(in.datatype());
    if (!dtype.ok()) return dtype.status().WithPrefix("input '" + in.name() + "'");
    PT2_RETURN_IF_ERROR(CheckTensorParameters("input", in.name(), in.parameters()));
    Shape shape;
    PT2_RETURN_IF_ERROR(ReadShape(in.name(), in.shape(), shape));
    if (raw) {
      if (in.has_contents()) {
        return InvalidArgument("input '" + in.name() +
                               "' sets contents although raw_input_contents is used");
      }
      tensors.push_back(View(in.name(), *dtype, std::move(shape), request.raw_input_contents(i)));
    } else {
      PT2_RETURN_IF_ERROR(CheckTypedField(in, *dtype));
      PT2_ASSIGN_OR_RETURN(Tensor t, DecodeTyped(in, *dtype, std::move(shape)));
      tensors.push_back(std::move(t));
    }
  }
  return tensors;
}

Status CheckKServeOutputs(const inference::ModelInferRequest& request) {
  for (const auto& out : request.outputs()) {
    PT2_RETURN_IF_ERROR(CheckTensorParameters("requested output", out.name(), out.parameters()));
  }
  return Status::Ok();
}

void EncodeKServeOutputs(const std::vector<Tensor>& outputs,
                         inference::ModelInferResponse& response) {
  for (const Tensor& t : outputs) {
    auto* out = response.add_outputs();
    out->set_name(t.name);
    out->set_datatype(std::string(KServeDatatype(t.dtype)));
    for (int64_t d : t.shape) out->add_shape(d);
    response.add_raw_output_contents()->assign(reinterpret_cast<const char*>(t.data), t.nbytes);
  }
}

StatusOr<std::vector<Tensor>> DecodeRunInputs(const pt2serve::v1::RunRequest& request) {
  std::vector<Tensor> tensors;
  tensors.reserve(request.inputs_size());
  for (const auto& in : request.inputs()) {
    auto dtype = FromProtoDType(in.dtype());
    if (!dtype.ok()) return dtype.status().WithPrefix("input '" + in.name() + "'");
    Shape shape;
    PT2_RETURN_IF_ERROR(ReadShape(in.name(), in.shape(), shape));
    tensors.push_back(View(in.name(), *dtype, std::move(shape), in.data()));
  }
  return tensors;
}

void EncodeTensor(const Tensor& tensor, pt2serve::v1::Tensor& out) {
  out.set_name(tensor.name);
  out.set_dtype(ToProtoDType(tensor.dtype));
  for (int64_t d : tensor.shape) out.add_shape(d);
  out.set_data(reinterpret_cast<const char*>(tensor.data), tensor.nbytes);
}

}  // namespace pt2serve::server
