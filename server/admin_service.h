// pt2serve.v1.Admin: model load/unload and weight hot-swap, served only on
// the admin listener and only to callers presenting the bearer token
// ("authorization: Bearer <token>"); anything else is UNAUTHENTICATED.
// Failures are logged with the peer address and throttled per host
// (AuthThrottle). Blocking operations (load, unload, swap, free) run on
// background threads, at most kMaxAdminBackground at once; beyond that a call
// is refused with RESOURCE_EXHAUSTED.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "pt2serve/v1/admin.grpc.pb.h"
#include "runtime/model_registry.h"
#include "server/auth_throttle.h"
#include "server/model_repository.h"

namespace pt2serve::server {

class UpdateReactor;
struct UploadGuard;

inline constexpr int kMaxAdminBackground = 8;

// UpdateConstantBuffer is served raw (grpc::ByteBuffer) so that the reactor
// parses each message itself and can tell a malformed message from the end
// of the stream (see update_reactor.h).
using AdminServiceBase = pt2serve::v1::Admin::WithRawCallbackMethod_UpdateConstantBuffer<
    pt2serve::v1::Admin::CallbackService>;

// Default of ServerConfig::upload_idle_timeout_ms.
inline constexpr std::chrono::milliseconds kDefaultUploadIdleTimeout{30000};

class AdminService final : public AdminServiceBase {
 public:
  // An empty `token` refuses every call. References must outlive the service.
  // A weight upload that receives no message for `upload_idle_timeout` is
  // aborted (ABORTED), releasing the model's writer slot.
  AdminService(ModelRegistry& registry, ModelRepository& repository, std::string token,
               std::chrono::milliseconds upload_idle_timeout = kDefaultUploadIdleTimeout);
  // Waits for background operations (loads, unloads) still running.
  ~AdminService();

  // Aborts uploads to `model` that are still receiving (called when the
  // model starts unloading, so an idle uploader cannot block the unload).
  void AbortUploads(const std::string& model);
  // Shutdown: aborts every upload still receiving and refuses new ones
  // (UNAVAILABLE), so that a stalled or slow uploader cannot hold the
  // daemon's exit for the drain timeout; weights staged now would not
  // outlive the process anyway.
  void StopUploads();

  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* ctx,
                                      const pt2serve::v1::LoadModelRequest* request,
                                      pt2serve::v1::LoadModelResponse* response) override;
  grpc::ServerUnaryReactor* UnloadModel(grpc::CallbackServerContext* ctx,
                                        const pt2serve::v1::UnloadModelRequest* request,
                                        pt2serve::v1::UnloadModelResponse* response) override;
  using AdminServiceBase::UpdateConstantBuffer;  // the typed overload is not registered
  grpc::ServerReadReactor<grpc::ByteBuffer>* UpdateConstantBuffer(
      grpc::CallbackServerContext* ctx, grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SwapConstantBuffer(grpc::CallbackServerContext* ctx,
                                               const pt2serve::v1::SwapRequest* request,
                                               pt2serve::v1::SwapResponse* response) override;
  grpc::ServerUnaryReactor* Rollback(grpc::CallbackServerContext* ctx,
                                     const pt2serve::v1::RollbackRequest* request,
                                     pt2serve::v1::SwapResponse* response) override;
  grpc::ServerUnaryReactor* FreeInactiveConstantBuffer(
      grpc::CallbackServerContext* ctx, const pt2serve::v1::FreeInactiveRequest* request,
      pt2serve::v1::FreeInactiveResponse* response) override;
  grpc::ServerUnaryReactor* GetConstantBufferStatus(
      grpc::CallbackServerContext* ctx, const pt2serve::v1::ConstantBufferStatusRequest* request,
      pt2serve::v1::ConstantBufferStatus* response) override;

 private:
  friend class UpdateReactor;
  // Files a live upload under `model` ("" until its header arrived); false
  // once StopUploads ran (the upload must end itself).
  bool AddUpload(const std::string& model, std::shared_ptr<UploadGuard> upload);
  void RemoveUpload(const std::shared_ptr<UploadGuard>& upload);
  // Runs a swap-like operation on `model` off the gRPC thread.
  grpc::ServerUnaryReactor* SwapLike(grpc::CallbackServerContext* ctx, const std::string& model,
                                     const std::string& expected_version,
                                     const std::string& expected_active,
                                     pt2serve::v1::SwapResponse* response, bool rollback);
  // Remembers a failed weight operation for GetConstantBufferStatus.last_error.
  void RecordError(const std::string& model, std::string_view operation, const Status& error);

  struct LastError {
    std::string text;
    std::chrono::system_clock::time_point at;
  };
  Status Authenticate(grpc::CallbackServerContext* ctx);
  // Authenticate, then the model named in a weight RPC: its name's length
  // checked, NOT_FOUND when it is not loaded.
  StatusOr<ModelHandle> AuthorizedModel(grpc::CallbackServerContext* ctx,
                                        const std::string& model);
  // Runs `work` on its own thread (it blocks: loads, drains); the destructor
  // waits for it, so it never outlives the registry. RESOURCE_EXHAUSTED (and
  // `work` is not run) when kMaxAdminBackground operations are running.
  Status RunInBackground(std::function<void()> work);
  // The upload watchdog loop: expires idle uploads until the destructor.
  void WatchUploads();

  ModelRegistry& registry_;
  ModelRepository& repository_;
  const std::string token_;
  AuthThrottle throttle_;
  std::mutex background_mu_;
  std::condition_variable background_done_;
  int background_ = 0;  // guarded by background_mu_
  std::mutex uploads_mu_;
  // Live UpdateConstantBuffer streams by model; removed in the reactor's
  // OnDone. Guarded by uploads_mu_ (never held while taking a guard's mutex).
  std::multimap<std::string, std::shared_ptr<UploadGuard>> uploads_;
  const std::chrono::milliseconds upload_idle_timeout_;
  std::condition_variable watchdog_wake_;  // with uploads_mu_
  bool stopping_ = false;                  // guarded by uploads_mu_
  bool uploads_refused_ = false;           // guarded by uploads_mu_; set by StopUploads
  std::thread watchdog_;                   // runs WatchUploads
  std::mutex errors_mu_;
  // Last failed weight operation per model name. Guarded by errors_mu_.
  std::map<std::string, LastError> last_errors_;
};

}  // namespace pt2serve::server
