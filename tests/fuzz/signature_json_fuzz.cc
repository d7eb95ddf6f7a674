// Fuzz target: the signature JSON a package carries as metadata
// "pt2serve.signature" (Signature::FromJson). An accepted signature must
// survive ToJson -> FromJson unchanged.
#include <string_view>

#include "common/tensor.h"
#include "tests/fuzz/fuzz_check.h"

using namespace pt2serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto sig = Signature::FromJson(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!sig.ok()) {
    FUZZ_CHECK(sig.status().code() == StatusCode::kInvalidArgument);
    return 0;
  }
  const std::string json = sig->ToJson();
  auto again = Signature::FromJson(json);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->ToJson() == json);
  return 0;
}
