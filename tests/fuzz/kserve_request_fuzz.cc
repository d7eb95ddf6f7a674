// Fuzz target: a KServe v2 ModelInferRequest (protobuf wire bytes, as the
// inference port receives them) through the server's decoder
// (DecodeKServeInputs, CheckKServeOutputs), then the input validation the
// request meets next, then the response encoder on what was decoded.
#include <google/protobuf/stubs/logging.h>

#include <cstring>

#include "server/tensor_codec.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/request_checks.h"

using namespace pt2serve;

// Protobuf logs every string field that is not UTF-8; mutated inputs have
// many. Silenced: the parse result is what the target checks.
static const bool g_quiet_protobuf = (google::protobuf::SetLogHandler(nullptr), true);

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  inference::ModelInferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  (void)server::CheckKServeOutputs(request);
  auto inputs = server::DecodeKServeInputs(request);
  if (!inputs.ok()) {
    FUZZ_CHECK(inputs.status().code() == StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(static_cast<int>(inputs->size()) == request.inputs_size());
  const bool raw = request.raw_input_contents_size() > 0;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const Tensor& t = (*inputs)[i];
    FUZZ_CHECK(t.name == request.inputs(i).name());
    FUZZ_CHECK(static_cast<int>(t.shape.size()) == request.inputs(i).shape_size());
    for (int64_t d : t.shape) FUZZ_CHECK(d >= 0);
    if (raw) {
      // Zero-copy: the tensor is exactly raw_input_contents(i).
      const std::string& bytes = request.raw_input_contents(i);
      FUZZ_CHECK(t.nbytes == bytes.size());
      FUZZ_CHECK(reinterpret_cast<const char*>(t.data) == bytes.data());
    }
  }
  fuzz::CheckDecodedInputs(*inputs);

  // What a client would get back if the model echoed its inputs.
  inference::ModelInferResponse response;
  server::EncodeKServeOutputs(*inputs, response);
  FUZZ_CHECK(response.raw_output_contents_size() == request.inputs_size());
  for (int i = 0; i < response.raw_output_contents_size(); ++i) {
    const Tensor& t = (*inputs)[i];
    const std::string& out = response.raw_output_contents(i);
    FUZZ_CHECK(out.size() == t.nbytes);
    FUZZ_CHECK(t.nbytes == 0 || std::memcmp(out.data(), t.data, t.nbytes) == 0);
  }
  return 0;
}
