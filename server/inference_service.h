// pt2serve.v1.Inference: the native API (Run, ListModels, GetModel).
#pragma once

#include "pt2serve/v1/inference.grpc.pb.h"
#include "runtime/model_registry.h"
#include "server/inference_core.h"

namespace pt2serve::server {

class InferenceService final : public pt2serve::v1::Inference::CallbackService {
 public:
  // References must outlive the service.
  InferenceService(ModelRegistry& registry, InferenceCore& core);

  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* ctx,
                                const pt2serve::v1::RunRequest* request,
                                pt2serve::v1::RunResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const pt2serve::v1::ListModelsRequest* request,
                                       pt2serve::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const pt2serve::v1::GetModelRequest* request,
                                     pt2serve::v1::ModelInfo* response) override;

 private:
  ModelRegistry& registry_;
  InferenceCore& core_;
};

// Shared with the admin service: a registry entry as a ModelSummary.
void FillModelSummary(const ModelStatus& status, const ModelRegistry& registry,
                      pt2serve::v1::ModelSummary& out);

}  // namespace pt2serve::server
