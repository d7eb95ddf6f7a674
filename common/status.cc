#include "common/status.h"

namespace pt2serve {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnknown: return "UNKNOWN";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(code_));
  out += ": ";
  out += message_;
  return out;
}

Status Status::WithPrefix(std::string_view prefix) const {
  if (ok()) return *this;
  return Status(code_, std::string(prefix) + ": " + message_);
}

std::ostream& operator<<(std::ostream& os, const Status& s) {
  return os << s.ToString();
}

#define PT2_STATUS_CTOR(Name, Code) \
  Status Name(std::string message) { return Status(StatusCode::Code, std::move(message)); }
PT2_STATUS_CTOR(InvalidArgument, kInvalidArgument)
PT2_STATUS_CTOR(NotFound, kNotFound)
PT2_STATUS_CTOR(AlreadyExists, kAlreadyExists)
PT2_STATUS_CTOR(FailedPrecondition, kFailedPrecondition)
PT2_STATUS_CTOR(ResourceExhausted, kResourceExhausted)
PT2_STATUS_CTOR(DeadlineExceeded, kDeadlineExceeded)
PT2_STATUS_CTOR(Unavailable, kUnavailable)
PT2_STATUS_CTOR(Internal, kInternal)
PT2_STATUS_CTOR(Cancelled, kCancelled)
PT2_STATUS_CTOR(Unimplemented, kUnimplemented)
PT2_STATUS_CTOR(PermissionDenied, kPermissionDenied)
PT2_STATUS_CTOR(Unauthenticated, kUnauthenticated)
PT2_STATUS_CTOR(DataLoss, kDataLoss)
PT2_STATUS_CTOR(Aborted, kAborted)
#undef PT2_STATUS_CTOR

}  // namespace pt2serve
