// The checks every weight operation makes before it touches a buffer: is a
// set of tensors (given with data, or announced by an upload's manifest) an
// exact replacement for a package's updatable constants, and are the
// StageOptions consistent?
//
// Pure functions of their arguments (no Model, no LibTorch, no state), so
// ConstantBufferManager, the unit tests and the fuzz target
// (tests/fuzz/upload_manifest_fuzz.cc) share one implementation.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "runtime/package_info.h"

namespace pt2serve {

struct StageOptions {
  // Label reported as the weights version once this set is active. Required.
  std::string version;
  // Optional lower- or upper-case hex SHA-256. StageFromFile checks it against
  // the file's bytes, UploadSession::Commit against the uploaded chunks (in
  // arrival order); Stage only records it.
  std::string sha256;
  // BeginUpload only: the expected SHA-256 arrives after the data
  // (UploadSession::ExpectSha256), so the chunks are hashed while they come
  // in. Excludes `sha256`.
  bool sha256_follows = false;
  // Free text for status(): a path, a URL, a training job. StageFromFile
  // defaults it to the path.
  std::string source;
};

// One tensor offered for a constant: a Tensor (with data, so `nbytes` is
// known) or an announced TensorSpec (no data yet, `nbytes` unset). Views:
// `name` and `shape` must outlive the call they are passed to.
struct OfferedTensor {
  std::string_view name;
  DType dtype = DType::kFloat32;
  const Shape* shape = nullptr;  // never null
  std::optional<size_t> nbytes;
};

// Longest problem list quoted in one message; the count always covers all.
// A gRPC status message travels in a trailer of limited size.
inline constexpr size_t kMaxListedProblems = 32;

// Every problem with `offered` as a complete replacement for `constants`
// (PackageInfo::constants) under `options`, in a fixed order: the options
// (no version label, sha256 both given and announced to follow, sha256 not
// 64 hex digits), then missing FQNs (in FQN order), then per offered tensor
// in the order given: unknown, duplicate, dtype, shape, data size. Empty
// when the set is acceptable.
std::vector<std::string> WeightSetProblems(const std::vector<ConstantInfo>& constants,
                                           const std::vector<OfferedTensor>& offered,
                                           const StageOptions& options);

// "3 problems with the weights for model 'mlp': missing 'fc2.bias'; ...":
// INVALID_ARGUMENT quoting at most kMaxListedProblems of `problems`.
// REQUIRES: `problems` is not empty.
Status ProblemsStatus(const std::string& model, const std::vector<std::string>& problems);

}  // namespace pt2serve
