#pragma once

namespace pt2serve::server {
// Reported by ServerMetadata and `pt2serve --version`.
inline constexpr char kVersion[] = "0.1.0";
}  // namespace pt2serve::server
