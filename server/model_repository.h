// ModelRepository: loads and unloads models on request (admin RPCs and the
// KServe repository extension), confining package paths to one root folder.
//
// Thread-safety: all methods may be called concurrently (the registry
// serializes loads/unloads of the same name).
#pragma once

#include <string>

#include "common/status.h"
#include "runtime/model_registry.h"

namespace pt2serve::server {

class ModelRepository {
 public:
  // `root` empty = loading by path is disabled. `defaults` supplies the
  // options a request leaves unset. `registry` must outlive this object.
  ModelRepository(ModelRegistry& registry, std::string root, ModelConfig defaults);

  // Resolves `relative` under the root: INVALID_ARGUMENT when it is absolute
  // or leaves the root through "..", NOT_FOUND when missing,
  // FAILED_PRECONDITION when no root is configured. Confinement is lexical:
  // symlinks inside the repository are the operator's and are followed
  // (a repository of links to a model store works).
  StatusOr<std::string> Resolve(const std::string& relative) const;

  // Loads `config` after resolving config.path under the root (an empty
  // path means "<name>.pt2" or "<name>/model.pt2").
  Status Load(ModelConfig config);
  Status Unload(const std::string& name);

  const std::string& root() const { return root_; }
  const ModelConfig& defaults() const { return defaults_; }

 private:
  ModelRegistry& registry_;
  const std::string root_;
  const ModelConfig defaults_;
};

}  // namespace pt2serve::server
