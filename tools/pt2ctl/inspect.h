// `pt2ctl models inspect PACKAGE.pt2`: what a package holds, read locally
// (no server): device, signature (derived, from pt2serve metadata, or
// declared), constants (updatable or not, bytes) and platform metadata.
#pragma once

#include <string>

#include "common/status.h"
#include "package/package_description.h"

namespace pt2serve::ctl {

// Human-readable report.
std::string InspectText(const PackageDescription& desc);
// The same as one JSON object.
std::string InspectJson(const PackageDescription& desc);

}  // namespace pt2serve::ctl
