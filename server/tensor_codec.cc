#include "server/tensor_codec.h"

#include <cstdint>
#include <cstring>
#include <optional>

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

constexpr std::string_view kShmRegion = "shared_memory_region";
constexpr std::string_view kShmByteSize = "shared_memory_byte_size";
constexpr std::string_view kShmOffset = "shared_memory_offset";

bool IsShmParameter(std::string_view key) {
  return key == kShmRegion || key == kShmByteSize || key == kShmOffset;
}

using Parameters = google::protobuf::Map<std::string, inference::InferParameter>;

// Tensor-level parameters: only the shared-memory ones are implemented, and
// only with the extension on (`shm_on`); any other is refused rather than
// ignored.
Status CheckTensorParameters(std::string_view what, const std::string& name,
                             const Parameters& parameters, bool shm_on) {
  for (const auto& [key, value] : parameters) {
    if (shm_on && IsShmParameter(key)) continue;
    const bool shm = key.starts_with("shared_memory");
    return InvalidArgument(
        std::string(what) + " '" + name + "': parameter '" + Printable(key) +
        "' is not supported" +
        (shm ? (shm_on ? " (system shared memory takes shared_memory_region, "
                         "shared_memory_byte_size and shared_memory_offset)"
                       : " (system shared memory is off on this server: enable it with "
                         "server.shared_memory: system, or send the data in the request)")
             : key == "classification" ? " (no classification extension)"
                                       : ""));
  }
  return Status::Ok();
}

// A non-negative integer parameter; `fallback` when absent.
StatusOr<uint64_t> ShmInteger(std::string_view what, const std::string& name,
                              const Parameters& parameters, std::string_view key,
                              std::optional<uint64_t> fallback) {
  auto it = parameters.find(std::string(key));
  if (it == parameters.end()) {
    if (fallback) return *fallback;
    return InvalidArgument(std::string(what) + " '" + name + "': parameter '" +
                           std::string(key) + "' is required with shared_memory_region");
  }
  const auto& p = it->second;
  if (p.parameter_choice_case() == inference::InferParameter::kUint64Param) {
    return p.uint64_param();
  }
  if (p.parameter_choice_case() == inference::InferParameter::kInt64Param &&
      p.int64_param() >= 0) {
    return static_cast<uint64_t>(p.int64_param());
  }
  return InvalidArgument(std::string(what) + " '" + name + "': parameter '" + std::string(key) +
                         "' must be an integer >= 0");
}

// The shared-memory span a tensor's parameters name; nullopt when they name
// none. REQUIRES: CheckTensorParameters passed.
StatusOr<std::optional<SharedMemorySpan>> ShmSpan(std::string_view what, const std::string& name,
                                                  const Parameters& parameters,
                                                  const SharedMemoryRegistry* shm) {
  if (!shm || parameters.empty()) return std::optional<SharedMemorySpan>();
  auto region = parameters.find(std::string(kShmRegion));
  if (region == parameters.end()) {
    return InvalidArgument(std::string(what) + " '" + name + "': parameter '" +
                           Printable(parameters.begin()->first) + "' needs shared_memory_region");
  }
  if (region->second.parameter_choice_case() != inference::InferParameter::kStringParam) {
    return InvalidArgument(std::string(what) + " '" + name +
                           "': parameter 'shared_memory_region' must be a string");
  }
  PT2_ASSIGN_OR_RETURN(uint64_t byte_size,
                       ShmInteger(what, name, parameters, kShmByteSize, std::nullopt));
  PT2_ASSIGN_OR_RETURN(uint64_t offset, ShmInteger(what, name, parameters, kShmOffset, 0));
  PT2_ASSIGN_OR_RETURN(SharedMemorySpan span,
                       shm->Span(std::string(what) + " '" + name + "'",
                                 region->second.string_param(), offset, byte_size));
  return std::optional<SharedMemorySpan>(std::move(span));
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

// A tensor over shared memory: no copy when aligned (the model reads the
// client's memory); the tensor holds the mapping alive.
Tensor ShmView(const std::string& name, DType dtype, Shape shape, const SharedMemorySpan& span) {
  if (reinterpret_cast<uintptr_t>(span.data) % 16 != 0) {
    return Tensor::Copy(name, dtype, std::move(shape), span.data, span.size);
  }
  Tensor t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data = span.data;
  t.nbytes = span.size;
  t.owner = span.region;
  return t;
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

StatusOr<std::vector<Tensor>> DecodeKServeInputs(const inference::ModelInferRequest& request,
                                                 const SharedMemoryRegistry* shm,
                                                 SharedMemoryUse* use) {
  std::vector<Tensor> tensors;
  tensors.reserve(request.inputs_size());
  std::vector<std::optional<SharedMemorySpan>> spans(request.inputs_size());
  int not_shm = 0;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& in = request.inputs(i);
    PT2_RETURN_IF_ERROR(CheckTensorParameters("input", in.name(), in.parameters(), shm != nullptr));
    PT2_ASSIGN_OR_RETURN(spans[i], ShmSpan("input", in.name(), in.parameters(), shm));
    if (!spans[i]) ++not_shm;
  }
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != not_shm) {
    return InvalidArgument("raw_input_contents has " +
                           std::to_string(request.raw_input_contents_size()) +
                           " entries but the request has " + std::to_string(not_shm) +
                           " inputs" +
                           (not_shm == request.inputs_size() ? "" : " outside shared memory"));
  }
  int raw_index = 0;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& in = request.inputs(i);
    auto dtype = DTypeFromKServe(in.datatype());
    if (!dtype.ok()) return dtype.status().WithPrefix("input '" + in.name() + "'");
    Shape shape;
    PT2_RETURN_IF_ERROR(ReadShape(in.name(), in.shape(), shape));
    if (spans[i]) {
      if (in.has_contents()) {
        return InvalidArgument("input '" + in.name() +
                               "' sets contents although its data is in shared memory");
      }
      tensors.push_back(ShmView(in.name(), *dtype, std::move(shape), *spans[i]));
      use->input_regions.push_back(spans[i]->region);
    } else if (raw) {
      if (in.has_contents()) {
        return InvalidArgument("input '" + in.name() +
                               "' sets contents although raw_input_contents is used");
      }
      tensors.push_back(
          View(in.name(), *dtype, std::move(shape), request.raw_input_contents(raw_index++)));
    } else {
      PT2_RETURN_IF_ERROR(CheckTypedField(in, *dtype));
      PT2_ASSIGN_OR_RETURN(Tensor t, DecodeTyped(in, *dtype, std::move(shape)));
      tensors.push_back(std::move(t));
    }
  }
  return tensors;
}

Status CheckKServeOutputs(const inference::ModelInferRequest& request,
                          const SharedMemoryRegistry* shm, SharedMemoryUse* use) {
  for (const auto& out : request.outputs()) {
    PT2_RETURN_IF_ERROR(
        CheckTensorParameters("requested output", out.name(), out.parameters(), shm != nullptr));
    PT2_ASSIGN_OR_RETURN(auto span, ShmSpan("requested output", out.name(), out.parameters(), shm));
    if (span) use->outputs.emplace_back(out.name(), std::move(*span));
  }
  return Status::Ok();
}

namespace {

void AddTensorHeader(const Tensor& t, inference::ModelInferResponse::InferOutputTensor* out) {
  out->set_name(t.name);
  out->set_datatype(std::string(KServeDatatype(t.dtype)));
  for (int64_t d : t.shape) out->add_shape(d);
}

Status CheckNotLost(const SharedMemoryRegion& region, std::string_view used_by) {
  if (!region.Lost()) return Status::Ok();
  return region.CheckIntact().WithPrefix(used_by);
}

}  // namespace

Status EncodeKServeOutputs(const std::vector<Tensor>& outputs, const SharedMemoryUse& use,
                           inference::ModelInferResponse& response) {
  for (const auto& region : use.input_regions) {
    PT2_RETURN_IF_ERROR(CheckNotLost(*region, "an input"));
  }
  if (use.outputs.empty()) {
    EncodeKServeOutputs(outputs, response);
    return Status::Ok();
  }
  std::vector<const SharedMemorySpan*> targets(outputs.size(), nullptr);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& t = outputs[i];
    for (const auto& [name, span] : use.outputs) {
      if (name == t.name) targets[i] = &span;
    }
    if (targets[i] && t.nbytes > targets[i]->size) {
      return InvalidArgument("output '" + t.name + "' is " + std::to_string(t.nbytes) +
                             " bytes but its shared_memory_byte_size is " +
                             std::to_string(targets[i]->size) + " (shared memory region '" +
                             Printable(targets[i]->region->name()) + "')");
    }
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& t = outputs[i];
    auto* out = response.add_outputs();
    AddTensorHeader(t, out);
    const SharedMemorySpan* span = targets[i];
    if (!span) {
      response.add_raw_output_contents()->assign(reinterpret_cast<const char*>(t.data), t.nbytes);
      continue;
    }
    // An empty entry: Triton's clients index raw_output_contents by output
    // position (its C++ client reads one entry per output unchecked).
    response.add_raw_output_contents();
    if (t.nbytes > 0) std::memcpy(span->data, t.data, t.nbytes);
    PT2_RETURN_IF_ERROR(CheckNotLost(*span->region, "output '" + t.name + "'"));
    auto& params = *out->mutable_parameters();
    params[std::string(kShmRegion)].set_string_param(span->region->name());
    params[std::string(kShmByteSize)].set_int64_param(static_cast<int64_t>(t.nbytes));
    params[std::string(kShmOffset)].set_int64_param(static_cast<int64_t>(span->offset));
  }
  return Status::Ok();
}

void EncodeKServeOutputs(const std::vector<Tensor>& outputs,
                         inference::ModelInferResponse& response) {
  for (const Tensor& t : outputs) {
    AddTensorHeader(t, response.add_outputs());
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
