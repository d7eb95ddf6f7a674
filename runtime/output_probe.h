// Finding the dtypes and shapes of a package's outputs by running it.
//
// Internal to runtime/ (LibTorch types). Packages without pt2serve metadata
// do not record their outputs' dtypes and shapes anywhere readable, so
// ModelPackage::Load runs the freshly loaded model on zero-filled inputs of
// two sizes (within every dynamic dim's range) and compares the results:
// dims that changed are dynamic (-1), the others static.
#pragma once

#include <functional>
#include <vector>

#include <ATen/Tensor.h>

#include "common/status.h"
#include "common/tensor.h"
#include "devices/device.h"

namespace pt2serve {

using RunFn = std::function<StatusOr<std::vector<at::Tensor>>(const std::vector<at::Tensor>&)>;

// Fills sig->outputs[i].dtype and .shape. REQUIRES: sig->inputs complete
// (dtypes, shapes, dim ranges) and sig->outputs sized to the package's
// output count. `run` calls the model; it is called once or twice.
Status ProbeOutputs(const DeviceSpec& device, const RunFn& run, Signature* sig);

}  // namespace pt2serve
