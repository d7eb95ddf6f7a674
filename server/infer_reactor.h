// The unary reactor for inference RPCs: owns the PendingCall so that a client
// cancellation (or an expired gRPC deadline) reaches the queued request.
#pragma once

#include <grpcpp/support/server_callback.h>

#include <memory>

#include "server/inference_core.h"

namespace pt2serve::server {

class InferReactor final : public grpc::ServerUnaryReactor {
 public:
  const std::shared_ptr<PendingCall>& call() const { return call_; }
  void OnCancel() override { call_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<PendingCall> call_ = std::make_shared<PendingCall>();
};

}  // namespace pt2serve::server
