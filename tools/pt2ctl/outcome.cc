#include "tools/pt2ctl/outcome.h"

#include <cstdio>

namespace pt2serve::ctl {

Outcome Outcome::LocalError(std::string message) {
  Outcome o;
  o.exit_ = ExitCode::kLocalError;
  o.message_ = std::move(message);
  return o;
}

Outcome Outcome::FromRpc(const grpc::Status& status, bool reached, std::string_view address) {
  Outcome o;
  if (status.ok()) return o;
  o.code_ = std::string(GrpcCodeName(status.error_code()));
  if (reached) {
    o.exit_ = ExitCode::kRefused;
    o.message_ = status.error_message();
  } else {
    o.exit_ = ExitCode::kUnreachable;
    o.message_ = "cannot reach the server at " + std::string(address) + ": " +
                 status.error_message();
  }
  return o;
}

std::string Outcome::ErrorLine() const {
  if (code_.empty()) return "pt2ctl: " + message_;
  return "pt2ctl: " + code_ + ": " + message_;
}

std::string Outcome::ErrorJson() const {
  return "{\"error\":{\"code\":\"" + JsonEscape(code_.empty() ? "LOCAL_ERROR" : code_) +
         "\",\"message\":\"" + JsonEscape(message_) +
         "\",\"exit_code\":" + std::to_string(static_cast<int>(exit_)) + "}}";
}

std::string_view GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

std::string JsonEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

}  // namespace pt2serve::ctl
