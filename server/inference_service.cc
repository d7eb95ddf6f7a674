#include "server/inference_service.h"

#include "common/limits.h"
#include "server/batching_convert.h"

#include "server/infer_reactor.h"
#include "server/memory_convert.h"
#include "server/status_mapping.h"
#include "server/tensor_codec.h"

namespace pt2serve::server {
namespace {

pt2serve::v1::ModelState ToProtoState(ModelState state) {
  switch (state) {
    case ModelState::kLoading: return pt2serve::v1::LOADING;
    case ModelState::kReady: return pt2serve::v1::READY;
    case ModelState::kUnloading:
    case ModelState::kUnloaded: return pt2serve::v1::UNLOADING;
    case ModelState::kFailed: return pt2serve::v1::FAILED;
    case ModelState::kRestarting: return pt2serve::v1::RESTARTING;
  }
  return pt2serve::v1::MODEL_STATE_UNSPECIFIED;
}

void FillSpec(const TensorSpec& spec, pt2serve::v1::TensorSpec* out) {
  out->set_name(spec.name);
  out->set_dtype(ToProtoDType(spec.dtype));
  for (int64_t d : spec.shape) out->add_shape(d);
  for (const DimRange& r : spec.dims) {
    auto* dim = out->add_dims();
    dim->set_min(r.min);
    dim->set_max(r.max == DimRange::kUnbounded ? -1 : r.max);
    dim->set_symbol(r.symbol);
  }
}

// Lengths of the request's strings, before any of them is echoed.
Status CheckRunStrings(const pt2serve::v1::RunRequest& request) {
  PT2_RETURN_IF_ERROR(CheckLength("model name", request.model(), kMaxModelNameBytes));
  PT2_RETURN_IF_ERROR(CheckLength("request_id", request.request_id(), kMaxRequestIdBytes));
  for (const auto& in : request.inputs()) {
    PT2_RETURN_IF_ERROR(CheckLength("an input name", in.name(), kMaxTensorNameBytes));
  }
  for (const auto& out : request.outputs()) {
    PT2_RETURN_IF_ERROR(CheckLength("a requested output name", out, kMaxTensorNameBytes));
  }
  return Status::Ok();
}

int64_t Micros(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

}  // namespace

void FillModelSummary(const ModelStatus& status, const ModelRegistry& registry,
                      pt2serve::v1::ModelSummary& out) {
  out.set_name(status.name);
  out.set_state(ToProtoState(status.state));
  out.set_reason(status.reason);
  if (status.state == ModelState::kReady) {
    if (auto handle = registry.Get(status.name); handle.ok()) {
      out.set_weights_version((*handle)->weights_version());
    }
  }
}

InferenceService::InferenceService(ModelRegistry& registry, InferenceCore& core)
    : registry_(registry), core_(core) {}

grpc::ServerUnaryReactor* InferenceService::Run(grpc::CallbackServerContext* ctx,
                                                const pt2serve::v1::RunRequest* request,
                                                pt2serve::v1::RunResponse* response) {
  const auto received = Clock::now();
  auto* reactor = new InferReactor();
  Status checked = CheckRunStrings(*request);
  auto inputs = checked.ok() ? DecodeRunInputs(*request) : StatusOr<std::vector<Tensor>>(checked);
  if (!inputs.ok()) {
    core_.RecordEarlyFailure(Protocol::kNative, request->model(), request->request_id(),
                             inputs.status(), received);
    reactor->Finish(ToGrpcStatus(inputs.status()));
    return reactor;
  }
  if (request->model_version() < 0) {
    const Status bad = InvalidArgument("model_version must be >= 0 (0 = the serving version)");
    core_.RecordEarlyFailure(Protocol::kNative, request->model(), request->request_id(), bad,
                             received);
    reactor->Finish(ToGrpcStatus(bad));
    return reactor;
  }
  InferRequest infer;
  infer.id = request->request_id();
  infer.deadline = DeadlineFromSystem(ctx->deadline());
  infer.inputs = std::move(inputs).value();
  infer.outputs.assign(request->outputs().begin(), request->outputs().end());
  infer.priority = request->priority();
  core_.Start(reactor->call(), Protocol::kNative, request->model(), request->model_version(),
              std::move(infer), received, Clock::now() - received,
              Reply{[request, response](InferResponse& result, int64_t version) {
                      response->set_model(request->model());
                      response->set_model_version(version);
                      response->set_request_id(request->request_id());
                      response->set_weights_version(result.weights_version);
                      response->set_queue_time_us(Micros(result.timing.queue));
                      response->set_compute_time_us(Micros(result.timing.compute));
                      response->set_batch_size(result.batch_rows);
                      for (const Tensor& t : result.outputs) {
                        EncodeTensor(t, *response->add_outputs());
                      }
                      return Status::Ok();
                    },
                    [reactor](const Status& status) { reactor->Finish(ToGrpcStatus(status)); }});
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::ListModels(grpc::CallbackServerContext* ctx,
                                                       const pt2serve::v1::ListModelsRequest*,
                                                       pt2serve::v1::ListModelsResponse* response) {
  for (const auto& s : registry_.List()) FillModelSummary(s, registry_, *response->add_models());
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* InferenceService::GetModel(grpc::CallbackServerContext* ctx,
                                                     const pt2serve::v1::GetModelRequest* request,
                                                     pt2serve::v1::ModelInfo* response) {
  if (Status name = CheckLength("model name", request->name(), kMaxModelNameBytes); !name.ok()) {
    return FinishUnary(ctx, name);
  }
  auto status = registry_.GetStatus(request->name());
  if (!status.ok()) return FinishUnary(ctx, status.status());
  response->set_name(status->name);
  response->set_state(ToProtoState(status->state));
  response->set_reason(status->reason);
  response->set_num_runners(static_cast<int32_t>(status->config.num_runners));
  response->set_max_queue_size(static_cast<int32_t>(status->config.max_queue_size));
  response->set_cpu_threads(status->config.cpu_threads);
  response->set_isolation(std::string(IsolationName(status->config.isolation)));
  response->set_restarts(static_cast<int64_t>(status->restarts));
  response->set_package_path(status->config.path);
  auto handle = registry_.Get(request->name());
  if (handle.ok()) {
    const PackageInfo& info = (*handle)->info();
    for (const auto& in : info.signature.inputs) FillSpec(in, response->add_inputs());
    for (const auto& out : info.signature.outputs) FillSpec(out, response->add_outputs());
    response->set_max_batch_size(static_cast<int32_t>(info.signature.max_batch_size));
    if (const DynamicBatcher* batcher = (*handle)->batcher()) {
      BatchingToProto(batcher->options(), response->mutable_dynamic_batching());
    }
    response->set_device((*handle)->devices());
    response->set_weights_version((*handle)->weights_version());
    for (const auto& c : info.constants) {
      auto* spec = response->add_constants();
      spec->set_name(c.fqn);
      spec->set_dtype(ToProtoDType(c.dtype));
      for (int64_t d : c.shape) spec->add_shape(d);
    }
    response->set_constants_bytes(static_cast<int64_t>(info.constants_nbytes));
    response->set_signature_source(info.signature_source);
    response->set_runtime_constant_folding(info.runtime_constant_folding);
    for (const auto& name : info.folded_constants) response->add_folded_constants(name);
    WeightsMemoryToProto((*handle)->weights().status(), registry_.staging_budget(),
                         response->mutable_weights_memory());
  }
  return FinishUnary(ctx, Status::Ok());
}

}  // namespace pt2serve::server
