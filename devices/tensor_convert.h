// Conversions between the torch-free Tensor and at::Tensor. Internal to
// runtime/ and devices/.
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/ScalarType.h>

#include <optional>

#include "common/tensor.h"
#include "devices/device.h"

namespace pt2serve {

c10::Device ToC10Device(const DeviceSpec& device);
std::optional<c10::ScalarType> ToScalarType(DType dtype);
std::optional<DType> FromScalarType(c10::ScalarType type);

// Wraps `t` without copying on CPU (the at::Tensor keeps t.owner alive) and
// copies it to `device` otherwise; a tensor already on `device`
// (t.on_device) is wrapped as well. REQUIRES: t passed ValidateAgainstSpec.
StatusOr<at::Tensor> ToAten(const Tensor& t, const DeviceSpec& device);

// Host copy of `t` in the torch-free form; no copy when it is already a
// contiguous CPU tensor (the result keeps it alive).
StatusOr<Tensor> FromAten(const at::Tensor& t, std::string name);

}  // namespace pt2serve
