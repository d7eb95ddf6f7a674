// Status and StatusOr: the error type used across pt2serve's libraries.
//
// Codes follow the canonical gRPC/absl code space so that the server layer can
// map them one-to-one (server/status_mapping.h is the only place that does).
// No exceptions cross a library boundary: LibTorch exceptions are caught where
// they happen and turned into a Status.
#pragma once

#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace pt2serve {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message)
      : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: input 'x': ..." (or "OK").
  std::string ToString() const;

  // Returns a copy whose message is "<prefix>: <message>".
  Status WithPrefix(std::string_view prefix) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

std::ostream& operator<<(std::ostream& os, const Status& s);

// Convenience constructors, e.g. InvalidArgument("input 'x': wrong rank").
Status InvalidArgument(std::string message);
Status NotFound(std::string message);
Status AlreadyExists(std::string message);
Status FailedPrecondition(std::string message);
Status ResourceExhausted(std::string message);
Status DeadlineExceeded(std::string message);
Status Unavailable(std::string message);
Status Internal(std::string message);
Status Cancelled(std::string message);
Status Unimplemented(std::string message);
Status PermissionDenied(std::string message);
Status Unauthenticated(std::string message);
Status DataLoss(std::string message);
Status Aborted(std::string message);

// Holds either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT
    if (status_.ok()) status_ = Internal("StatusOr constructed from OK status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  // REQUIRES: ok().
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;  // OK iff value_ holds a value
  std::optional<T> value_;
};

}  // namespace pt2serve

// Early-return helpers; keep call sites short without hiding control flow.
#define PT2_RETURN_IF_ERROR(expr)            \
  do {                                        \
    ::pt2serve::Status pt2_status_ = (expr);  \
    if (!pt2_status_.ok()) return pt2_status_; \
  } while (0)

#define PT2_CONCAT_INNER(a, b) a##b
#define PT2_CONCAT(a, b) PT2_CONCAT_INNER(a, b)
#define PT2_ASSIGN_OR_RETURN(lhs, expr)                              \
  auto PT2_CONCAT(pt2_or_, __LINE__) = (expr);                       \
  if (!PT2_CONCAT(pt2_or_, __LINE__).ok())                           \
    return PT2_CONCAT(pt2_or_, __LINE__).status();                   \
  lhs = std::move(PT2_CONCAT(pt2_or_, __LINE__)).value()
