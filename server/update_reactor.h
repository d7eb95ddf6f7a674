// The client-streaming UpdateConstantBuffer RPC: a header, then chunks
// written straight into the model's upload buffers (one host copy of the
// weights), optionally a trailer with the SHA-256, committed when the client
// half-closes.
//
// The stream is read as raw messages (grpc::ByteBuffer) and parsed here, so
// a message that does not parse is told apart from the end of the stream:
// it fails the upload with INVALID_ARGUMENT (gRPC's typed reader reports both
// as ok=false, which used to commit what had arrived).
//
// Idle timeout: every message received stamps UploadGuard::last_activity;
// AdminService's watchdog calls Expire() on uploads idle for longer than the
// configured limit, which finishes them with ABORTED and releases the
// model's writer slot.
//
// Chunks are copied on the gRPC thread (bounded by the chunk size); the
// commit (copy into the container's inactive buffer + constant folding) runs
// on an AdminService background thread. A stream that ends early, fails a
// check or is cancelled stages nothing: the UploadSession is dropped and the
// active weights keep serving. An unload of the model aborts an upload that
// is still receiving (ABORTED), so an idle client cannot hold the model.
//
// Thread-safety and lifetime: gRPC calls OnReadDone on its threads, Abort()
// comes from the thread unloading the model, the commit runs on a background
// thread. They all go through an UploadGuard: its (recursive) mutex
// serializes them, and its `reactor` pointer is cleared in OnDone, so a
// caller holding the guard never touches a deleted reactor. Finish() may run
// OnDone() inline, so nothing touches the reactor after calling it.
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>

#include "pt2serve/v1/admin.pb.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/model_registry.h"
#include "runtime/upload_session.h"

namespace pt2serve::server {

class AdminService;
class UpdateReactor;

struct UploadGuard {
  std::recursive_mutex mu;
  UpdateReactor* reactor = nullptr;  // null once the RPC is done
  // steady_clock time (ns since its epoch) of the last message received or
  // of the start; read by the watchdog without taking `mu`.
  std::atomic<int64_t> last_activity_ns{0};
};

class UpdateReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  // `response` receives the serialized UpdateConstantBufferResponse.
  UpdateReactor(AdminService& service, grpc::CallbackServerContext* ctx,
                grpc::ByteBuffer* response);

  void OnReadDone(bool ok) override;
  void OnCancel() override {}
  void OnDone() override;

  // Cancels the upload if it is still receiving (the client sees CANCELLED
  // and nothing is staged); no-op once it is committing or done.
  static void Abort(const std::shared_ptr<UploadGuard>& guard, const std::string& why);
  // Finishes the upload with ABORTED (`why` in the message) if it is still
  // receiving and has been idle since `idle_since`; no-op otherwise.
  static void Expire(const std::shared_ptr<UploadGuard>& guard,
                     std::chrono::steady_clock::time_point idle_since, const std::string& why);

 private:
  enum class Phase { kReceiving, kCommitting, kFinished };
  Status OnHeader(const pt2serve::v1::UpdateHeader& header);
  Status OnChunk(const pt2serve::v1::TensorChunk& chunk);
  Status OnTrailer(const pt2serve::v1::UpdateTrailer& trailer);
  // Parses raw_ into request_ and handles it.
  Status OnMessage();
  // The client half-closed: stage what was sent (in the background).
  void CommitLocked();
  // Drops the upload and finishes with `status`. REQUIRES: mu_ held.
  void FailLocked(const Status& status);
  void FinishLocked(const grpc::Status& status);

  const std::shared_ptr<UploadGuard> guard_;
  Phase phase_ = Phase::kReceiving;  // guarded by guard_->mu, like every field below
  std::string abort_reason_;
  AdminService& service_;
  grpc::CallbackServerContext* ctx_;
  grpc::ByteBuffer* response_;
  grpc::ByteBuffer raw_;  // the message being read
  pt2serve::v1::UpdateConstantBufferRequest request_;
  bool have_header_ = false;
  bool have_trailer_ = false;
  std::string model_name_;
  ModelHandle model_;                        // held for the whole stream
  std::unique_ptr<UploadSession> session_;   // streamed tensors
  std::string server_path_;                  // or a file on the server
  StageOptions options_;
  uint64_t chunks_ = 0;
  uint64_t messages_ = 0;  // received, header included
};

}  // namespace pt2serve::server
