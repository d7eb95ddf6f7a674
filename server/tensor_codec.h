// Conversion between wire tensors (KServe v2 and pt2serve.v1) and Tensor.
//
// Decoding does not copy raw bytes: the returned Tensors point into the
// request message, which the caller must keep alive while they are used
// (gRPC keeps a unary request alive until the RPC finishes). Typed KServe
// contents (fp32_contents, ...) are packed into a new owned buffer.
#pragma once

#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "kserve/grpc_service.pb.h"
#include "pt2serve/v1/inference.pb.h"

namespace pt2serve::server {

// KServe datatype strings: "FP32", "INT64", "BF16", ...
std::string_view KServeDatatype(DType dtype);
StatusOr<DType> DTypeFromKServe(std::string_view datatype);
inference::DataType TritonDataType(DType dtype);

pt2serve::v1::DataType ToProtoDType(DType dtype);
StatusOr<DType> FromProtoDType(pt2serve::v1::DataType dtype);

// Inputs of a ModelInfer request, from raw_input_contents or typed contents.
// INVALID_ARGUMENT for a tensor with parameters (shared memory, ...), typed
// values in more than one field or in a field of another dtype, contents next
// to raw_input_contents, a negative dim or more than 32 dims.
StatusOr<std::vector<Tensor>> DecodeKServeInputs(const inference::ModelInferRequest& request);
// Appends outputs as raw_output_contents (the form tritonclient expects).
// INVALID_ARGUMENT when a requested output carries parameters
// ("classification", "shared_memory_region", ...): none is implemented.
Status CheckKServeOutputs(const inference::ModelInferRequest& request);
void EncodeKServeOutputs(const std::vector<Tensor>& outputs,
                         inference::ModelInferResponse& response);

StatusOr<std::vector<Tensor>> DecodeRunInputs(const pt2serve::v1::RunRequest& request);
void EncodeTensor(const Tensor& tensor, pt2serve::v1::Tensor& out);

}  // namespace pt2serve::server
