#include "server/status_mapping.h"

#include <grpcpp/server_context.h>

#include "common/limits.h"

namespace pt2serve::server {

std::string ClientMessage(std::string_view message) {
  return Truncated(Printable(message, message.size()));
}

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // StatusCode uses the canonical code space, so the values line up.
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(status.code())),
                      ClientMessage(status.message()));
}

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace pt2serve::server
