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
  // Lets gRPC run OnDone and OnCancel on the thread that completes the call
  // instead of handing them to its executor thread: that hand-off cost one
  // thread wake-up per request (gRPC 1.51 does it for every reactor that
  // does not say this). Both reactions are short and never block: OnDone
  // deletes the reactor; OnCancel takes the queue's lock briefly and may
  // Finish this call with CANCELLED. gRPC marks the hook "not API" (its own
  // DefaultReactor uses it); OnDone still never runs before the method
  // handler has returned, so returning `this` after Finish stays safe.
  bool InternalInlineable() override { return true; }

 private:
  std::shared_ptr<PendingCall> call_ = std::make_shared<PendingCall>();
};

}  // namespace pt2serve::server
