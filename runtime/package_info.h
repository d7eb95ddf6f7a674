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
  std::map<std::string, std::string> metadata;
  std::vector<ConstantInfo> constants;  // sorted by fqn
  size_t constants_nbytes = 0;
};

}  // namespace pt2serve
