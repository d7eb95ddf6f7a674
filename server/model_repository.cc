#include "server/model_repository.h"

#include <filesystem>

namespace pt2serve::server {

namespace fs = std::filesystem;

ModelRepository::ModelRepository(ModelRegistry& registry, std::string root,
                                  ModelConfig defaults)
    : registry_(registry), root_(std::move(root)), defaults_(std::move(defaults)) {}

StatusOr<std::string> ModelRepository::Resolve(const std::string& relative) const {
  if (root_.empty()) {
    return FailedPrecondition("no model repository is configured (server.model_repository)");
  }
  if (relative.empty()) return InvalidArgument("empty path");
  const fs::path rel(relative);
  if (rel.is_absolute()) {
    return InvalidArgument("path '" + relative + "' must be relative to the model repository");
  }
  const fs::path normal = rel.lexically_normal();
  if (normal.empty() || *normal.begin() == "..") {
    return InvalidArgument("path '" + relative + "' leaves the model repository");
  }
  const fs::path full = fs::path(root_) / normal;
  std::error_code ec;
  if (!fs::exists(full, ec)) {
    return NotFound("'" + relative + "' does not exist in the model repository");
  }
  return full.string();
}

Status ModelRepository::Load(ModelConfig config) {
  if (config.path.empty()) {
    auto flat = Resolve(config.name + ".pt2");
    config.path = flat.ok() ? *flat : "";
    if (!flat.ok()) {
      PT2_ASSIGN_OR_RETURN(config.path, Resolve(config.name + "/model.pt2"));
    }
  } else {
    PT2_ASSIGN_OR_RETURN(config.path, Resolve(config.path));
  }
  return registry_.Load(config);
}

Status ModelRepository::Unload(const std::string& name) { return registry_.Unload(name); }

}  // namespace pt2serve::server
