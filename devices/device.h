// Device selection for a model: which kind of worker runs its package.
//
// Torch-free header. `CheckHostSupports` is implemented against LibTorch in
// device.cc; everything device-specific stays in this folder so runtime and
// server code never branch on the device kind themselves.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace pt2serve {

enum class DeviceKind { kCpu, kCuda, kXpu, kMps };

struct DeviceSpec {
  DeviceKind kind = DeviceKind::kCpu;
  int index = -1;  // -1: the runtime's default device of that kind

  // Parses "cpu", "cuda", "cuda:1", "xpu:0", "mps".
  static StatusOr<DeviceSpec> Parse(std::string_view text);
  // The AOTI device key ("cpu", "cuda", "xpu", "mps").
  std::string_view key() const;
  // "cpu", "cuda:0", ...
  std::string ToString() const;
  bool operator==(const DeviceSpec&) const = default;
};

// Decides the device a package runs on. `requested` is the config value
// ("auto" or empty means: the package's own device, index 0 for
// accelerators). Fails with INVALID_ARGUMENT when the request contradicts the
// package's AOTI_DEVICE_KEY (a package compiled for CUDA cannot run on CPU).
StatusOr<DeviceSpec> ResolveDevice(std::string_view requested,
                                   std::string_view package_device_key);

// Splits a device list ("cuda:0,cuda:1") into its entries; a single device
// (or "auto") gives one entry. Duplicates are INVALID_ARGUMENT.
StatusOr<std::vector<std::string>> SplitDeviceList(std::string_view requested);

// FAILED_PRECONDITION naming what is missing when this host, or the linked
// LibTorch build, cannot run packages on `device` (no such runtime compiled
// in, no device present, index out of range).
Status CheckHostSupports(const DeviceSpec& device);

}  // namespace pt2serve
