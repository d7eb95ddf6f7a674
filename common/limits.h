// Length limits on client-supplied strings, and how such strings may be
// echoed. One set of limits for every front end, the admin API and the
// config (docs/errors.md lists them); a longer value is INVALID_ARGUMENT.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "common/status.h"

namespace pt2serve {

inline constexpr size_t kMaxModelNameBytes = 256;
inline constexpr size_t kMaxVersionLabelBytes = 128;  // weights versions, KServe model_version
inline constexpr size_t kMaxRequestIdBytes = 256;
inline constexpr size_t kMaxTensorNameBytes = 256;
inline constexpr size_t kMaxPathBytes = 4096;
// System shared memory (server/shared_memory_registry.h): region names, shm
// keys (NAME_MAX), regions registered at once, and mappings alive at once
// (unregistered regions stay mapped while requests still use them).
inline constexpr size_t kMaxSharedMemoryNameBytes = 256;
inline constexpr size_t kMaxSharedMemoryKeyBytes = 255;
inline constexpr size_t kMaxSharedMemoryRegions = 64;
inline constexpr size_t kMaxSharedMemoryMappings = 4 * kMaxSharedMemoryRegions;
// Longest status message a client receives (a backstop; the limits above
// keep ordinary messages far shorter).
inline constexpr size_t kMaxClientMessageBytes = 1024;

// INVALID_ARGUMENT "<what> is N bytes long (at most MAX)" when `value` is
// longer than `max` bytes.
Status CheckLength(std::string_view what, std::string_view value, size_t max);

// `value` for a message or a log line: control characters, backslashes and
// non-ASCII bytes escaped (\n, \x07, ...), cut after `max` bytes of input
// with "...(N bytes)" appended. Never contains a newline.
std::string Printable(std::string_view value, size_t max = 64);

// `message` cut to at most `max` bytes, with " ... (truncated)" at the end.
std::string Truncated(std::string_view message, size_t max = kMaxClientMessageBytes);

}  // namespace pt2serve
