#include "devices/device.h"

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/detail/XPUHooksInterface.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner.h>

#include <algorithm>
#include <charconv>

namespace pt2serve {

StatusOr<DeviceSpec> DeviceSpec::Parse(std::string_view text) {
  DeviceSpec spec;
  std::string_view kind = text.substr(0, text.find(':'));
  if (kind == "cpu") {
    spec.kind = DeviceKind::kCpu;
  } else if (kind == "cuda") {
    spec.kind = DeviceKind::kCuda;
  } else if (kind == "xpu") {
    spec.kind = DeviceKind::kXpu;
  } else if (kind == "mps") {
    spec.kind = DeviceKind::kMps;
  } else {
    return InvalidArgument("unknown device '" + std::string(text) +
                           "' (expected cpu, cuda[:N], xpu[:N] or mps)");
  }
  if (kind.size() < text.size()) {
    std::string_view idx = text.substr(kind.size() + 1);
    int value = -1;
    auto [ptr, ec] = std::from_chars(idx.data(), idx.data() + idx.size(), value);
    if (ec != std::errc() || ptr != idx.data() + idx.size() || value < 0) {
      return InvalidArgument("bad device index in '" + std::string(text) + "'");
    }
    if (spec.kind == DeviceKind::kCpu && value != 0) {
      return InvalidArgument("cpu takes no device index: '" + std::string(text) + "'");
    }
    spec.index = spec.kind == DeviceKind::kCpu ? -1 : value;
  }
  return spec;
}

std::string_view DeviceSpec::key() const {
  switch (kind) {
    case DeviceKind::kCpu: return "cpu";
    case DeviceKind::kCuda: return "cuda";
    case DeviceKind::kXpu: return "xpu";
    case DeviceKind::kMps: return "mps";
  }
  return "cpu";
}

std::string DeviceSpec::ToString() const {
  std::string out(key());
  if (kind != DeviceKind::kCpu && index >= 0) out += ":" + std::to_string(index);
  return out;
}

StatusOr<DeviceSpec> ResolveDevice(std::string_view requested,
                                   std::string_view package_device_key) {
  if (requested.empty() || requested == "auto") requested = package_device_key;
  PT2_ASSIGN_OR_RETURN(DeviceSpec spec, DeviceSpec::Parse(requested));
  if (spec.key() != package_device_key) {
    return InvalidArgument("package was compiled for device '" +
                           std::string(package_device_key) +
                           "' but the model is configured for '" +
                           std::string(requested) + "'");
  }
  if (spec.kind != DeviceKind::kCpu && spec.index < 0) spec.index = 0;
  return spec;
}

StatusOr<std::vector<std::string>> SplitDeviceList(std::string_view requested) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = std::min(requested.find(',', start), requested.size());
    std::string one(requested.substr(start, comma - start));
    for (const auto& seen : out) {
      if (seen == one) return InvalidArgument("device '" + one + "' is listed twice");
    }
    out.push_back(std::move(one));
    if (comma == requested.size()) break;
    start = comma + 1;
  }
  return out;
}

Status CheckHostSupports(const DeviceSpec& device) {
  // AOTI runners register themselves per device key from the device library's
  // static initializers; a missing entry means this LibTorch lacks the backend.
  const auto& runners = torch::inductor::getAOTIModelRunnerRegistry();
  const std::string key(device.key());
  if (device.kind != DeviceKind::kCpu && runners.find(key) == runners.end()) {
    return FailedPrecondition("this build of LibTorch has no AOTInductor runner for '" +
                              key + "' (package needs " + device.ToString() + ")");
  }
  int count = 0;
  switch (device.kind) {
    case DeviceKind::kCpu:
      return Status::Ok();
    case DeviceKind::kCuda:
      if (!at::hasCUDA()) return FailedPrecondition("no CUDA device on this host");
      count = at::detail::getCUDAHooks().getNumGPUs();
      break;
    case DeviceKind::kXpu:
      if (!at::hasXPU()) return FailedPrecondition("no XPU device on this host");
      count = at::detail::getXPUHooks().getNumGPUs();
      break;
    case DeviceKind::kMps:
      if (!at::hasMPS()) return FailedPrecondition("no MPS device on this host");
      return Status::Ok();
  }
  if (device.index >= count) {
    return FailedPrecondition(device.ToString() + " requested but this host has " +
                              std::to_string(count) + " " + key + " device(s)");
  }
  return Status::Ok();
}

}  // namespace pt2serve
