#include "devices/tensor_convert.h"

#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

namespace pt2serve {
namespace {

struct Pair {
  DType dtype;
  c10::ScalarType type;
};
constexpr Pair kPairs[] = {
    {DType::kBool, c10::ScalarType::Bool},       {DType::kUInt8, c10::ScalarType::Byte},
    {DType::kInt8, c10::ScalarType::Char},       {DType::kInt16, c10::ScalarType::Short},
    {DType::kInt32, c10::ScalarType::Int},       {DType::kInt64, c10::ScalarType::Long},
    {DType::kFloat16, c10::ScalarType::Half},    {DType::kBFloat16, c10::ScalarType::BFloat16},
    {DType::kFloat32, c10::ScalarType::Float},   {DType::kFloat64, c10::ScalarType::Double},
};


}  // namespace

c10::Device ToC10Device(const DeviceSpec& d) {
  switch (d.kind) {
    case DeviceKind::kCpu: return c10::Device(c10::DeviceType::CPU);
    case DeviceKind::kCuda: return c10::Device(c10::DeviceType::CUDA, d.index);
    case DeviceKind::kXpu: return c10::Device(c10::DeviceType::XPU, d.index);
    case DeviceKind::kMps: return c10::Device(c10::DeviceType::MPS);
  }
  return c10::Device(c10::DeviceType::CPU);
}

std::optional<c10::ScalarType> ToScalarType(DType dtype) {
  for (const auto& p : kPairs) {
    if (p.dtype == dtype) return p.type;
  }
  return std::nullopt;
}

std::optional<DType> FromScalarType(c10::ScalarType type) {
  for (const auto& p : kPairs) {
    if (p.type == type) return p.dtype;
  }
  return std::nullopt;
}

StatusOr<at::Tensor> ToAten(const Tensor& t, const DeviceSpec& device) {
  auto type = ToScalarType(t.dtype);
  if (!type) return InvalidArgument("tensor '" + t.name + "': unsupported dtype");
  try {
    // The model never writes its inputs; from_blob needs a non-const pointer.
    auto owner = t.owner;
    auto options = at::TensorOptions().dtype(*type);
    // Already on its device (staged weights): wrapped, not copied.
    if (t.on_device) options = options.device(ToC10Device(device));
    at::Tensor host = at::from_blob(
        const_cast<std::byte*>(t.data), t.shape,
        [owner](void*) mutable { owner.reset(); }, options);
    if (t.on_device || device.kind == DeviceKind::kCpu) return host;
    return host.to(ToC10Device(device), /*non_blocking=*/false, /*copy=*/true);
  } catch (const c10::Error& e) {
    return Internal("tensor '" + t.name + "': " + e.what_without_backtrace());
  }
}

StatusOr<Tensor> FromAten(const at::Tensor& t, std::string name) {
  auto dtype = FromScalarType(t.scalar_type());
  if (!dtype) {
    return Internal("output '" + name + "' has unsupported dtype " +
                    std::string(c10::toString(t.scalar_type())));
  }
  try {
    auto host = std::make_shared<at::Tensor>(t.to(c10::kCPU).contiguous());
    Tensor out;
    out.name = std::move(name);
    out.dtype = *dtype;
    out.shape.assign(host->sizes().begin(), host->sizes().end());
    out.data = static_cast<const std::byte*>(host->const_data_ptr());
    out.nbytes = host->nbytes();
    out.owner = std::move(host);
    return out;
  } catch (const c10::Error& e) {
    return Internal(std::string("reading a model output: ") + e.what_without_backtrace());
  }
}

}  // namespace pt2serve
