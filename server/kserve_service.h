// KServe v2 / Open Inference Protocol (package `inference`), plus the Triton
// extensions tritonclient and perf_analyzer use: ModelConfig,
// ModelStatistics, RepositoryIndex, RepositoryModelLoad/Unload and (when
// enabled) system shared memory.
#pragma once

#include <functional>
#include <string>

#include "kserve/grpc_service.grpc.pb.h"
#include "runtime/model_registry.h"
#include "server/inference_core.h"
#include "server/model_repository.h"
#include "server/model_stats.h"
#include "server/shared_memory_registry.h"
#include "server/tensor_codec.h"

namespace pt2serve::server {

struct KServeOptions {
  std::string server_version;
  // RepositoryModelLoad/Unload are admin operations: PERMISSION_DENIED on
  // the inference port unless this is set.
  bool allow_repository_admin = false;
  // ServerReady's answer (the daemon: Server::Ready). Unset = every model
  // READY (ModelRegistry::AllReady). Must be callable from any thread.
  std::function<bool()> server_ready;
  // System shared memory regions (docs/shared-memory.md); null = the
  // extension is off: its RPCs answer UNIMPLEMENTED and tensors that name a
  // region INVALID_ARGUMENT. Must outlive the service.
  SharedMemoryRegistry* shared_memory = nullptr;
};

// A KServe model_version: "" = the serving version (kServingVersion), else a
// number >= 1; anything else is INVALID_ARGUMENT.
StatusOr<int64_t> ParseModelVersion(const std::string& model, const std::string& version);

// Shared by ModelInfer and ModelStreamInfer: the runtime request for a KServe
// request (deadline and `timeout` parameter, decoded inputs, requested
// outputs) and the version it names. The inputs point into `request` (or
// shared memory), which must outlive them. With `shm` (the extension on), the
// shared memory the request uses goes into `use`, which must then be non-null
// and kept until the response is encoded.
Status BuildInferRequest(const inference::ModelInferRequest& request,
                         std::chrono::system_clock::time_point grpc_deadline,
                         const SharedMemoryRegistry* shm, SharedMemoryUse* use,
                         InferRequest& infer, int64_t& version);
// Fills a KServe response from a result (raw or shared-memory outputs,
// weights_version parameter) computed by model version `version`. Fails as
// EncodeKServeOutputs does; `use` may be null (no shared memory).
Status EncodeInferResponse(const inference::ModelInferRequest& request, InferResponse& result,
                           int64_t version, const SharedMemoryUse* use,
                           inference::ModelInferResponse& response);

// The generated CallbackService, except that ModelStreamInfer is a raw-bytes
// method (StreamInferReactor parses each message itself, so it can tell a
// message that does not parse from a half-close).
using KServeServiceBase = inference::GRPCInferenceService::WithCallbackMethod_ServerLive<
    inference::GRPCInferenceService::WithCallbackMethod_ServerReady<
    inference::GRPCInferenceService::WithCallbackMethod_ModelReady<
    inference::GRPCInferenceService::WithCallbackMethod_ServerMetadata<
    inference::GRPCInferenceService::WithCallbackMethod_ModelMetadata<
    inference::GRPCInferenceService::WithCallbackMethod_ModelInfer<
    inference::GRPCInferenceService::WithRawCallbackMethod_ModelStreamInfer<
    inference::GRPCInferenceService::WithCallbackMethod_ModelConfig<
    inference::GRPCInferenceService::WithCallbackMethod_ModelStatistics<
    inference::GRPCInferenceService::WithCallbackMethod_RepositoryIndex<
    inference::GRPCInferenceService::WithCallbackMethod_RepositoryModelLoad<
    inference::GRPCInferenceService::WithCallbackMethod_RepositoryModelUnload<
    inference::GRPCInferenceService::WithCallbackMethod_SystemSharedMemoryStatus<
    inference::GRPCInferenceService::WithCallbackMethod_SystemSharedMemoryRegister<
    inference::GRPCInferenceService::WithCallbackMethod_SystemSharedMemoryUnregister<
    inference::GRPCInferenceService::Service>>>>>>>>>>>>>>>;

class KServeService final : public KServeServiceBase {
 public:
  // All references must outlive the service.
  KServeService(ModelRegistry& registry, InferenceCore& core, StatsTable& stats,
                ModelRepository& repository, KServeOptions options);

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* ctx,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* ctx,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* ctx,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* ctx,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* ctx,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* ctx,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* ctx,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* ctx,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelLoad(
      grpc::CallbackServerContext* ctx, const inference::RepositoryModelLoadRequest* request,
      inference::RepositoryModelLoadResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(
      grpc::CallbackServerContext* ctx, const inference::RepositoryModelUnloadRequest* request,
      inference::RepositoryModelUnloadResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryStatus(
      grpc::CallbackServerContext* ctx, const inference::SystemSharedMemoryStatusRequest* request,
      inference::SystemSharedMemoryStatusResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryRegister(
      grpc::CallbackServerContext* ctx,
      const inference::SystemSharedMemoryRegisterRequest* request,
      inference::SystemSharedMemoryRegisterResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryUnregister(
      grpc::CallbackServerContext* ctx,
      const inference::SystemSharedMemoryUnregisterRequest* request,
      inference::SystemSharedMemoryUnregisterResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* ctx,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;
  // Triton's streaming extension: requests and responses on one stream,
  // responses in completion order; a failed request answers with
  // error_message and the stream goes on.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ModelStreamInfer(
      grpc::CallbackServerContext* ctx) override;

 private:
  ModelRegistry& registry_;
  InferenceCore& core_;
  StatsTable& stats_;
  ModelRepository& repository_;
  const KServeOptions options_;
};

}  // namespace pt2serve::server
