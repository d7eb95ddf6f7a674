// What a loaded package contains: signature, device, metadata, weights.
// Torch-free so the server can report it (GetModel, ModelMetadata).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/tensor.h"
#include "devices/device.h"

namespace pt2serve {

// One weight (parameter or buffer) the container holds.
struct ConstantInfo {
  std::string fqn;            // original name, e.g. "fc1.weight"
  DType dtype = DType::kFloat32;
  Shape shape;
  size_t nbytes = 0;
};

struct PackageInfo {
  std::string path;
  std::string device_key;  // the package's AOTI_DEVICE_KEY
  DeviceSpec device;       // where it runs
  Signature signature;
  // Where `signature` came from: "pt2serve metadata", "derived from the
  // package" or "declared in the model config" (SignatureSourceName).
  std::string signature_source;
  // False for packages compiled without
  // aot_inductor.use_runtime_constant_folding: parameters inductor folded
  // into other constants at compile time are then absent from `constants`
  // and cannot be updated.
  bool runtime_constant_folding = true;
  // Constants the container holds that are not updatable (folded results,
  // tensor constants), by internal name.
  std::vector<std::string> folded_constants;
  std::map<std::string, std::string> metadata;
  std::vector<ConstantInfo> constants;  // sorted by fqn
  size_t constants_nbytes = 0;
  // Memory ONE constant buffer of the container holds (per replica), derived
  // from the package's constant table (the runtime exposes no sizes):
  // `blob_nbytes` is the buffer's weight blob (every non-folded constant,
  // updatable or not, each padded to AOTInductor's 64-byte alignment; at
  // least constants_nbytes), `folded_nbytes` the constant-folded results
  // the buffer holds once folded (separate allocations).
  size_t blob_nbytes = 0;
  size_t folded_nbytes = 0;
};

}  // namespace pt2serve
