// Outcome: what one pt2ctl command ended with, and the process exit code it
// maps to.
//
// Exit codes (also in `pt2ctl --help` and README.md):
//   0  success
//   1  the server refused the request (any gRPC error from a reachable server)
//   2  usage or local error (bad flags, unreadable/invalid file, missing token)
//   3  the server is unreachable (could not connect, or the connection was lost)
#pragma once

#include <grpcpp/support/status.h>

#include <string>
#include <string_view>

#include "common/status.h"

namespace pt2serve::ctl {

enum class ExitCode : int { kOk = 0, kRefused = 1, kLocalError = 2, kUnreachable = 3 };

class Outcome {
 public:
  Outcome() = default;  // success

  // A problem found before or without talking to the server (exit 2).
  static Outcome LocalError(std::string message);
  static Outcome LocalError(const Status& status) { return LocalError(status.message()); }
  // An RPC failed. `reached`: the connection to the server was up when it
  // failed, so the server itself answered (exit 1); otherwise exit 3.
  static Outcome FromRpc(const grpc::Status& status, bool reached, std::string_view address);

  bool ok() const { return exit_ == ExitCode::kOk; }
  ExitCode exit_code() const { return exit_; }
  // gRPC code name ("FAILED_PRECONDITION"); "" for local errors and success.
  const std::string& code() const { return code_; }
  const std::string& message() const { return message_; }

  // The line printed on stderr: "pt2ctl: FAILED_PRECONDITION: <message>",
  // "pt2ctl: <message>" for local errors.
  std::string ErrorLine() const;
  // {"error":{"code":"...","message":"...","exit_code":N}} for --json.
  std::string ErrorJson() const;

 private:
  ExitCode exit_ = ExitCode::kOk;
  std::string code_;
  std::string message_;
};

// "FAILED_PRECONDITION" for grpc::StatusCode::FAILED_PRECONDITION, etc.
std::string_view GrpcCodeName(grpc::StatusCode code);

// Escapes `text` as the contents of a JSON string (without the quotes).
std::string JsonEscape(std::string_view text);

}  // namespace pt2serve::ctl
