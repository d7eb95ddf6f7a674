#include "common/limits.h"

#include <cstdio>

namespace pt2serve {

Status CheckLength(std::string_view what, std::string_view value, size_t max) {
  if (value.size() <= max) return Status::Ok();
  return InvalidArgument(std::string(what) + " is " + std::to_string(value.size()) +
                         " bytes long (at most " + std::to_string(max) + ")");
}

std::string Printable(std::string_view value, size_t max) {
  std::string out;
  const size_t n = std::min(value.size(), max);
  out.reserve(n + 16);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(value[i]);
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\\': out += "\\\\"; break;
      default:
        if (c < 0x20 || c >= 0x7f) {
          char hex[5];
          std::snprintf(hex, sizeof(hex), "\\x%02x", c);
          out += hex;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  if (value.size() > max) out += "...(" + std::to_string(value.size()) + " bytes)";
  return out;
}

std::string Truncated(std::string_view message, size_t max) {
  constexpr std::string_view kMark = " ... (truncated)";
  if (message.size() <= max) return std::string(message);
  std::string out(message.substr(0, max > kMark.size() ? max - kMark.size() : 0));
  out += kMark;
  return out;
}

}  // namespace pt2serve
