// Logging set-up: spdlog, one named logger per module ("server", "registry",
// "kserve", "admin", "access", ...), all writing to stderr through one sink,
// as text or as JSON lines.
//
// Call ConfigureLogging() once at start-up before any Logger(); Logger() is
// thread-safe afterwards.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace pt2serve::server {

// level: trace|debug|info|warn|error|critical|off; format: text|json.
Status ConfigureLogging(const std::string& level, const std::string& format);

// The logger for `module`, created on first use with the configured sink.
std::shared_ptr<spdlog::logger> Logger(const std::string& module);

}  // namespace pt2serve::server
