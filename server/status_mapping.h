// The one place where pt2serve Status becomes grpc::Status.
#pragma once

#include <grpcpp/support/server_callback.h>
#include <grpcpp/support/status.h>

#include <string>
#include <string_view>

#include "common/status.h"

namespace pt2serve::server {

// A message as a client may see it: control characters escaped (one line,
// whatever a client string in it held), at most kMaxClientMessageBytes.
std::string ClientMessage(std::string_view message);

// The message goes through ClientMessage.
grpc::Status ToGrpcStatus(const Status& status);

// Finishes a unary callback RPC at once with `status` (the RPC's response
// message must already be filled in on success).
grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const Status& status);

}  // namespace pt2serve::server
