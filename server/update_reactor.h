// The client-streaming UpdateConstantBuffer RPC: a header, then chunks
// written straight into the model's upload buffers (one host copy of the
// weights), committed when the client half-closes.
//
// Chunks are copied on the gRPC thread (bounded by the chunk size); the
// commit (copy into the container's inactive buffer + constant folding) runs
// on an AdminService background thread. A stream that ends early, fails a
// check or is cancelled stages nothing: the UploadSession is dropped and the
// active weights keep serving.
#pragma once

#include <grpcpp/support/server_callback.h>

#include <memory>
#include <optional>

#include "pt2serve/v1/admin.pb.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/model_registry.h"

namespace pt2serve::server {

class AdminService;

class UpdateReactor final
    : public grpc::ServerReadReactor<pt2serve::v1::UpdateConstantBufferRequest> {
 public:
  UpdateReactor(AdminService& service, grpc::CallbackServerContext* ctx,
                pt2serve::v1::UpdateConstantBufferResponse* response);

  void OnReadDone(bool ok) override;
  void OnCancel() override {}
  void OnDone() override { delete this; }

 private:
  Status OnHeader(const pt2serve::v1::UpdateHeader& header);
  Status OnChunk(const pt2serve::v1::TensorChunk& chunk);
  // The client half-closed: stage what was sent (in the background).
  void Commit();
  void Fail(const Status& status);

  AdminService& service_;
  grpc::CallbackServerContext* ctx_;
  pt2serve::v1::UpdateConstantBufferResponse* response_;
  pt2serve::v1::UpdateConstantBufferRequest request_;
  bool have_header_ = false;
  std::string model_name_;
  ModelHandle model_;                        // held for the whole stream
  std::unique_ptr<UploadSession> session_;   // streamed tensors
  std::string server_path_;                  // or a file on the server
  StageOptions options_;
  uint64_t chunks_ = 0;
};

}  // namespace pt2serve::server
