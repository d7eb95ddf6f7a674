// Fuzz target: YAML text through the config loaders: the daemon's config
// file (ParseServerConfig) and a model repository folder's config.yaml
// (ParseRepositoryModelConfig). Errors must be INVALID_ARGUMENT (never an
// exception or a crash), and a config that parses must pass validation.
#include <string_view>

#include "config/server_config.h"
#include "tests/fuzz/fuzz_check.h"

using namespace pt2serve;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = ParseServerConfig(text, "fuzz.yaml");
  if (config.ok()) {
    FUZZ_CHECK(ValidateServerConfig(*config).ok());
  } else {
    FUZZ_CHECK(config.status().code() == StatusCode::kInvalidArgument);
  }
  auto model = ParseRepositoryModelConfig(text, "models/m/config.yaml", "m");
  if (model.ok()) {
    FUZZ_CHECK(model->entry.name == "m");
    FUZZ_CHECK(model->version_policy.latest >= 1);
  } else {
    FUZZ_CHECK(model.status().code() == StatusCode::kInvalidArgument);
  }
  return 0;
}
