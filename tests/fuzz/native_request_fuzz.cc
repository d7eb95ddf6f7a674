// Fuzz target: a pt2serve.v1 RunRequest (protobuf wire bytes, as the
// inference port receives them) through the server's decoder
// (DecodeRunInputs), then the input validation the request meets next, then
// EncodeTensor on what was decoded.
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
  pt2serve::v1::RunRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto inputs = server::DecodeRunInputs(request);
  if (!inputs.ok()) {
    FUZZ_CHECK(inputs.status().code() == StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(static_cast<int>(inputs->size()) == request.inputs_size());
  for (int i = 0; i < request.inputs_size(); ++i) {
    const Tensor& t = (*inputs)[i];
    const auto& in = request.inputs(i);
    FUZZ_CHECK(t.name == in.name());
    FUZZ_CHECK(static_cast<int>(t.shape.size()) == in.shape_size());
    for (int64_t d : t.shape) FUZZ_CHECK(d >= 0);
    // Zero-copy: the tensor is exactly the request's data field.
    FUZZ_CHECK(t.nbytes == in.data().size());
    FUZZ_CHECK(reinterpret_cast<const char*>(t.data) == in.data().data());
  }
  fuzz::CheckDecodedInputs(*inputs);

  for (const Tensor& t : *inputs) {
    pt2serve::v1::Tensor out;
    server::EncodeTensor(t, out);
    FUZZ_CHECK(out.name() == t.name);
    FUZZ_CHECK(out.data().size() == t.nbytes);
    FUZZ_CHECK(t.nbytes == 0 || std::memcmp(out.data().data(), t.data, t.nbytes) == 0);
    auto dtype = server::FromProtoDType(out.dtype());
    FUZZ_CHECK(dtype.ok() && *dtype == t.dtype);
  }
  return 0;
}
