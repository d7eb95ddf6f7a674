// ModelPackage: one loaded `.pt2` = one AOTInductor model container.
//
// Internal to runtime/ (it exposes LibTorch types); the server only sees Model.
// A ModelPackage holds `num_runners` model instances that share one set of
// weights. Run() is safe for up to num_runners concurrent callers; the
// RunnerPool in front of it guarantees that bound. Constant-buffer
// operations take no lock inside the container; ConstantBufferManager
// serializes them (one writer) and:
//   - writes and folds the INACTIVE buffer while requests run (they read
//     only the active one); a fold borrows a model instance, so it holds a
//     runner slot of its replica (RunnerPool::RunPriority);
//   - swaps, frees the inactive buffer and folds the ACTIVE one only with no
//     request inside (RunnerPool::RunExclusive).
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "devices/device.h"
#include "runtime/extraction_dirs.h"
#include "runtime/package_info.h"

namespace torch::inductor {
class AOTIModelPackageLoader;
class AOTIModelContainerRunner;
}  // namespace torch::inductor

namespace pt2serve {

class ModelPackage {
 public:
  struct Options {
    std::string path;
    std::string device = "auto";  // see ResolveDevice()
    size_t num_runners = 1;
    // Signature declared in the model config; checked against the package.
    std::optional<Signature> declared_signature;
  };

  // Loads the package. Every failure (missing file, not a package, no
  // signature, device this host lacks, LibTorch exception) is a Status.
  static StatusOr<std::unique_ptr<ModelPackage>> Load(const Options& options);
  ~ModelPackage();

  const PackageInfo& info() const { return info_; }

  // Runs the model on `stream_handle` (nullptr: the backend's current
  // stream). REQUIRES: at most num_runners concurrent callers and no
  // constant-buffer write in progress. Inputs are on the package's device.
  StatusOr<std::vector<at::Tensor>> Run(const std::vector<at::Tensor>& inputs,
                                        void* stream_handle = nullptr);

  // The container for constant-buffer operations (non-owning).
  torch::inductor::AOTIModelContainerRunner* runner() const;
  torch::inductor::AOTIModelPackageLoader& loader() const { return *loader_; }

 private:
  ModelPackage() = default;
  PackageInfo info_;
  // Declared before loader_, so released after the loader removed the
  // directory itself.
  ExtractionClaim extraction_claim_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

}  // namespace pt2serve
