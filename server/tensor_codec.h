// Conversion between wire tensors (KServe v2 and pt2serve.v1) and Tensor.
//
// Decoding does not copy raw bytes: the returned Tensors point into the
// request message, which the caller must keep alive while they are used
// (gRPC keeps a unary request alive until the RPC finishes). Typed KServe
// contents (fp32_contents, ...) are packed into a new owned buffer.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "kserve/grpc_service.pb.h"
#include "pt2serve/v1/inference.pb.h"
#include "server/shared_memory_registry.h"

namespace pt2serve::server {

// KServe datatype strings: "FP32", "INT64", "BF16", ...
std::string_view KServeDatatype(DType dtype);
StatusOr<DType> DTypeFromKServe(std::string_view datatype);
inference::DataType TritonDataType(DType dtype);

pt2serve::v1::DataType ToProtoDType(DType dtype);
StatusOr<DType> FromProtoDType(pt2serve::v1::DataType dtype);

// The system shared memory one KServe request uses (see
// shared_memory_registry.h). Holds the mappings alive until it is destroyed.
struct SharedMemoryUse {
  // Regions the inputs read: the request fails if one is found Lost() after
  // the model ran (it read zeros then).
  std::vector<std::shared_ptr<SharedMemoryRegion>> input_regions;
  // Outputs to write into shared memory instead of the response, by name.
  std::vector<std::pair<std::string, SharedMemorySpan>> outputs;
};

// Inputs of a ModelInfer request, from raw_input_contents, typed contents or
// (with `shm`) system shared memory: an input with parameter
// "shared_memory_region" has no raw_input_contents entry and points into the
// region without a copy (unless its address is not 16-byte aligned); its
// region is recorded in `use`. INVALID_ARGUMENT for any other tensor
// parameter, shared-memory parameters when `shm` is null (the extension is
// off) or that are malformed or out of the region's bounds, typed values in
// more than one field or in a field of another dtype, contents next to raw
// or shared-memory data, a negative dim or more than 32 dims.
// REQUIRES: `use` is non-null when `shm` is.
StatusOr<std::vector<Tensor>> DecodeKServeInputs(const inference::ModelInferRequest& request,
                                                 const SharedMemoryRegistry* shm = nullptr,
                                                 SharedMemoryUse* use = nullptr);
// Checks the requested outputs' parameters: with `shm`, the
// "shared_memory_*" ones are resolved into `use->outputs`; INVALID_ARGUMENT
// for anything else ("classification", ...) or bad shared-memory parameters,
// as for inputs. REQUIRES: `use` is non-null when `shm` is.
Status CheckKServeOutputs(const inference::ModelInferRequest& request,
                          const SharedMemoryRegistry* shm = nullptr,
                          SharedMemoryUse* use = nullptr);
// Appends outputs as raw_output_contents (the form tritonclient expects),
// except those in `use.outputs`: they are written into their region and
// carry the shared_memory_* parameters and an empty raw_output_contents
// entry (as Triton: its clients index raw entries by output position). INVALID_ARGUMENT, naming both sizes, when an output is
// larger than its shared_memory_byte_size, or when a region the request used
// was lost (truncated) meanwhile.
Status EncodeKServeOutputs(const std::vector<Tensor>& outputs, const SharedMemoryUse& use,
                           inference::ModelInferResponse& response);
void EncodeKServeOutputs(const std::vector<Tensor>& outputs,
                         inference::ModelInferResponse& response);

StatusOr<std::vector<Tensor>> DecodeRunInputs(const pt2serve::v1::RunRequest& request);
void EncodeTensor(const Tensor& tensor, pt2serve::v1::Tensor& out);

}  // namespace pt2serve::server
