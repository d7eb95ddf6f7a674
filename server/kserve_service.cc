#include "server/kserve_service.h"

#include "common/limits.h"
#include <algorithm>

#include "server/infer_reactor.h"
#include "server/logging.h"
#include "server/stream_infer_reactor.h"
#include "server/status_mapping.h"
#include "server/tensor_codec.h"

namespace pt2serve::server {
namespace {

constexpr char kPlatform[] = "pytorch_aoti";

StatusOr<ModelHandle> ReadyModel(ModelRegistry& registry, const std::string& name,
                                 const std::string& version) {
  PT2_ASSIGN_OR_RETURN(int64_t v, ParseModelVersion(name, version));
  return registry.Get(name, v);
}

// The version a KServe message reports ("" for a model with no usable version).
std::string VersionText(int64_t version) {
  return version == kServingVersion ? "" : std::to_string(version);
}

// Lengths of the request's strings, before any of them is echoed.
Status CheckRequestStrings(const inference::ModelInferRequest& request) {
  PT2_RETURN_IF_ERROR(CheckLength("model name", request.model_name(), kMaxModelNameBytes));
  PT2_RETURN_IF_ERROR(CheckLength("request id", request.id(), kMaxRequestIdBytes));
  for (const auto& in : request.inputs()) {
    PT2_RETURN_IF_ERROR(CheckLength("an input name", in.name(), kMaxTensorNameBytes));
  }
  for (const auto& out : request.outputs()) {
    PT2_RETURN_IF_ERROR(CheckLength("a requested output name", out.name(), kMaxTensorNameBytes));
  }
  return Status::Ok();
}

void FillMetadata(const TensorSpec& spec, inference::ModelMetadataResponse::TensorMetadata* out) {
  out->set_name(spec.name);
  out->set_datatype(std::string(KServeDatatype(spec.dtype)));
  for (int64_t d : spec.shape) out->add_shape(d);
}

// Triton convention: with max_batch_size > 0, dims exclude the batch dim.
template <typename Field>
void FillDims(const TensorSpec& spec, bool batched, Field* out) {
  for (size_t i = batched ? 1 : 0; i < spec.shape.size(); ++i) out->add_dims(spec.shape[i]);
}

void FillDuration(const Duration& d, inference::StatisticDuration* out) {
  out->set_count(d.count);
  out->set_ns(d.ns);
}

Status RequestTimeout(const inference::ModelInferRequest& request, Deadline& deadline) {
  auto it = request.parameters().find("timeout");
  if (it == request.parameters().end()) return Status::Ok();
  const auto& p = it->second;
  // Longer timeouts are treated as this long (and cannot overflow the clock).
  constexpr int64_t kMaxTimeoutUs = int64_t{366} * 24 * 3600 * 1'000'000;
  int64_t us = 0;
  if (p.parameter_choice_case() == inference::InferParameter::kInt64Param) {
    us = p.int64_param();
    if (us < 0) {
      return InvalidArgument("parameter 'timeout' must be >= 0 microseconds (0 = none), got " +
                             std::to_string(us));
    }
  } else if (p.parameter_choice_case() == inference::InferParameter::kUint64Param) {
    us = static_cast<int64_t>(std::min<uint64_t>(p.uint64_param(), kMaxTimeoutUs));
  } else {
    return InvalidArgument("parameter 'timeout' must be an integer (microseconds)");
  }
  us = std::min(us, kMaxTimeoutUs);
  if (us > 0) deadline = std::min(deadline, Clock::now() + std::chrono::microseconds(us));
  return Status::Ok();
}

// Triton's request parameter "priority" (dynamic batching priority level).
Status RequestPriority(const inference::ModelInferRequest& request, uint32_t& priority) {
  auto it = request.parameters().find("priority");
  if (it == request.parameters().end()) return Status::Ok();
  const auto& p = it->second;
  int64_t level = -1;
  if (p.parameter_choice_case() == inference::InferParameter::kInt64Param) {
    level = p.int64_param();
  } else if (p.parameter_choice_case() == inference::InferParameter::kUint64Param) {
    level = p.uint64_param() > UINT32_MAX ? -1 : static_cast<int64_t>(p.uint64_param());
  }
  if (level < 0 || level > UINT32_MAX) {
    return InvalidArgument("parameter 'priority' must be an integer level >= 0 (0 = default)");
  }
  priority = static_cast<uint32_t>(level);
  return Status::Ok();
}

}  // namespace

StatusOr<int64_t> ParseModelVersion(const std::string& model, const std::string& version) {
  PT2_RETURN_IF_ERROR(CheckLength("model name", model, kMaxModelNameBytes));
  if (version.empty()) return kServingVersion;
  const bool digits = version.size() <= 18 && version[0] != '0' &&
                      std::all_of(version.begin(), version.end(),
                                  [](char c) { return c >= '0' && c <= '9'; });
  if (!digits) {
    return InvalidArgument("model '" + Printable(model) + "': version '" +
                           Printable(version.substr(0, 32)) +
                           "' is not a version number (1, 2, ...)");
  }
  return std::stoll(version);
}

KServeService::KServeService(ModelRegistry& registry, InferenceCore& core, StatsTable& stats,
                             ModelRepository& repository, KServeOptions options)
    : registry_(registry),
      core_(core),
      stats_(stats),
      repository_(repository),
      options_(std::move(options)) {}

grpc::ServerUnaryReactor* KServeService::ServerLive(grpc::CallbackServerContext* ctx,
                                                    const inference::ServerLiveRequest*,
                                                    inference::ServerLiveResponse* response) {
  response->set_live(true);
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::ServerReady(grpc::CallbackServerContext* ctx,
                                                     const inference::ServerReadyRequest*,
                                                     inference::ServerReadyResponse* response) {
  response->set_ready(options_.server_ready ? options_.server_ready() : registry_.AllReady());
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::ModelReady(grpc::CallbackServerContext* ctx,
                                                    const inference::ModelReadyRequest* request,
                                                    inference::ModelReadyResponse* response) {
  auto version = ParseModelVersion(request->name(), request->version());
  if (!version.ok()) return FinishUnary(ctx, version.status());
  auto status = registry_.GetStatus(request->name(), *version);
  response->set_ready(status.ok() && status->state == ModelState::kReady);
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::ServerMetadata(
    grpc::CallbackServerContext* ctx, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  response->set_name("pt2serve");
  response->set_version(options_.server_version);
  for (const char* ext : {"model_configuration", "statistics", "model_repository"}) {
    response->add_extensions(ext);
  }
  if (options_.shared_memory) response->add_extensions("system_shared_memory");
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::ModelMetadata(
    grpc::CallbackServerContext* ctx, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  auto model = ReadyModel(registry_, request->name(), request->version());
  if (!model.ok()) return FinishUnary(ctx, model.status());
  const Signature& sig = (*model)->signature();
  response->set_name(request->name());
  for (const ModelStatus& s : registry_.ListVersions()) {
    if (s.name == request->name() &&
        (s.state == ModelState::kReady || s.state == ModelState::kRestarting)) {
      response->add_versions(VersionText(s.version));
    }
  }
  response->set_platform(kPlatform);
  for (const auto& in : sig.inputs) FillMetadata(in, response->add_inputs());
  for (const auto& out : sig.outputs) FillMetadata(out, response->add_outputs());
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::ModelConfig(grpc::CallbackServerContext* ctx,
                                                     const inference::ModelConfigRequest* request,
                                                     inference::ModelConfigResponse* response) {
  auto model = ReadyModel(registry_, request->name(), request->version());
  if (!model.ok()) return FinishUnary(ctx, model.status());
  const Signature& sig = (*model)->signature();
  const bool batched = sig.max_batch_size > 0;
  auto* config = response->mutable_config();
  config->set_name(request->name());
  config->set_platform(kPlatform);
  config->set_backend("pt2serve");
  const DynamicBatcher* batcher = (*model)->batcher();
  // With dynamic batching, the largest batch the server forms (and accepts).
  config->set_max_batch_size(static_cast<int32_t>(
      batcher ? batcher->options().max_batch_size : sig.max_batch_size));
  if (batcher) {
    const BatcherOptions& o = batcher->options();
    auto* db = config->mutable_dynamic_batching();
    for (int64_t size : o.preferred_batch_sizes) db->add_preferred_batch_size(static_cast<int32_t>(size));
    db->set_max_queue_delay_microseconds(static_cast<uint64_t>(o.max_queue_delay.count()));
    db->set_preserve_ordering(o.preserve_ordering);
    if (o.priority_levels > 1) {
      db->set_priority_levels(o.priority_levels);
      db->set_default_priority_level(o.default_priority_level);
    }
    db->mutable_default_queue_policy()->set_max_queue_size(
        static_cast<uint32_t>(o.max_queue_size[o.default_priority_level - 1]));
    for (uint32_t level = 1; level <= o.priority_levels && o.priority_levels > 1; ++level) {
      (*db->mutable_priority_queue_policy())[level].set_max_queue_size(
          static_cast<uint32_t>(o.max_queue_size[level - 1]));
    }
  }
  for (const auto& in : sig.inputs) {
    auto* m = config->add_input();
    m->set_name(in.name);
    m->set_data_type(TritonDataType(in.dtype));
    FillDims(in, batched, m);
  }
  for (const auto& out : sig.outputs) {
    auto* m = config->add_output();
    m->set_name(out.name);
    m->set_data_type(TritonDataType(out.dtype));
    FillDims(out, batched, m);
  }
  auto* group = config->add_instance_group();
  group->set_name(request->name());
  // Triton's count is per GPU listed in `gpus`.
  group->set_count(static_cast<int32_t>((*model)->config().num_runners));
  const bool on_cpu = (*model)->info().device.kind == DeviceKind::kCpu;
  group->set_kind(on_cpu ? inference::ModelInstanceGroup::KIND_CPU
                         : inference::ModelInstanceGroup::KIND_GPU);
  if (!on_cpu) {
    for (const DeviceSpec& device : (*model)->device_specs()) {
      if (device.index >= 0) group->add_gpus(device.index);
    }
  }
  (*config->mutable_parameters())["weights_version"].set_string_value(
      (*model)->weights_version());
  (*config->mutable_parameters())["device"].set_string_value((*model)->devices());
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::ModelStatistics(
    grpc::CallbackServerContext* ctx, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  // Statistics are kept per name; they are reported with the serving version.
  std::vector<std::pair<std::string, int64_t>> names;
  if (request->name().empty()) {
    for (const auto& s : registry_.List()) {
      if (s.state == ModelState::kReady) names.emplace_back(s.name, s.version);
    }
  } else {
    auto model = ReadyModel(registry_, request->name(), request->version());
    if (!model.ok()) return FinishUnary(ctx, model.status());
    names.emplace_back(request->name(), model->version());
  }
  for (const auto& [name, version] : names) {
    const ModelStatsSnapshot stats = stats_.Get(name)->Snapshot();
    auto* out = response->add_model_stats();
    out->set_name(name);
    out->set_version(VersionText(version));
    out->set_last_inference(stats.last_inference_ms);
    out->set_inference_count(stats.inference_count);
    out->set_execution_count(stats.execution_count);
    auto* infer = out->mutable_inference_stats();
    FillDuration(stats.success, infer->mutable_success());
    FillDuration(stats.fail, infer->mutable_fail());
    FillDuration(stats.queue, infer->mutable_queue());
    FillDuration(stats.compute_input, infer->mutable_compute_input());
    FillDuration(stats.compute_infer, infer->mutable_compute_infer());
    FillDuration(stats.compute_output, infer->mutable_compute_output());
    for (const auto& [size, batch] : stats.batches) {
      auto* b = out->add_batch_stats();
      b->set_batch_size(static_cast<uint64_t>(size));
      FillDuration(batch.compute_input, b->mutable_compute_input());
      FillDuration(batch.compute_infer, b->mutable_compute_infer());
      FillDuration(batch.compute_output, b->mutable_compute_output());
    }
  }
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::RepositoryIndex(
    grpc::CallbackServerContext* ctx, const inference::RepositoryIndexRequest* request,
    inference::RepositoryIndexResponse* response) {
  // Lists the repository (a scan: off the hot path, on request only).
  for (const IndexEntry& e : repository_.Index()) {
    if (request->ready() && e.state != "READY") continue;
    auto* m = response->add_models();
    m->set_name(e.name);
    m->set_version(VersionText(e.version));
    m->set_state(e.state);
    m->set_reason(e.reason);
  }
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::RepositoryModelLoad(
    grpc::CallbackServerContext* ctx, const inference::RepositoryModelLoadRequest* request,
    inference::RepositoryModelLoadResponse*) {
  if (!options_.allow_repository_admin) {
    return FinishUnary(ctx, PermissionDenied("RepositoryModelLoad is an admin operation; use the "
                                       "admin listener or enable "
                                       "allow_repository_admin_on_inference_port"));
  }
  if (Status name = CheckLength("model name", request->model_name(), kMaxModelNameBytes);
      !name.ok()) {
    return FinishUnary(ctx, name);
  }
  // Inline, as before: the load blocks this callback thread (an admin
  // operation, rare); nothing may outlive the service.
  return FinishUnary(ctx, repository_.LoadByName(request->model_name()));
}

grpc::ServerUnaryReactor* KServeService::RepositoryModelUnload(
    grpc::CallbackServerContext* ctx, const inference::RepositoryModelUnloadRequest* request,
    inference::RepositoryModelUnloadResponse*) {
  if (!options_.allow_repository_admin) {
    return FinishUnary(ctx, PermissionDenied("RepositoryModelUnload is an admin operation; use the "
                                       "admin listener or enable "
                                       "allow_repository_admin_on_inference_port"));
  }
  if (Status name = CheckLength("model name", request->model_name(), kMaxModelNameBytes);
      !name.ok()) {
    return FinishUnary(ctx, name);
  }
  return FinishUnary(ctx, repository_.Unload(request->model_name()));
}

Status BuildInferRequest(const inference::ModelInferRequest& request,
                         std::chrono::system_clock::time_point grpc_deadline,
                         const SharedMemoryRegistry* shm, SharedMemoryUse* use,
                         InferRequest& infer, int64_t& version) {
  PT2_RETURN_IF_ERROR(CheckRequestStrings(request));
  PT2_ASSIGN_OR_RETURN(version, ParseModelVersion(request.model_name(), request.model_version()));
  infer.id = request.id();
  infer.deadline = DeadlineFromSystem(grpc_deadline);
  PT2_RETURN_IF_ERROR(RequestTimeout(request, infer.deadline));
  PT2_RETURN_IF_ERROR(RequestPriority(request, infer.priority));
  PT2_ASSIGN_OR_RETURN(infer.inputs, DecodeKServeInputs(request, shm, use));
  PT2_RETURN_IF_ERROR(CheckKServeOutputs(request, shm, use));
  for (const auto& out : request.outputs()) infer.outputs.push_back(out.name());
  return Status::Ok();
}

Status EncodeInferResponse(const inference::ModelInferRequest& request, InferResponse& result,
                           int64_t version, const SharedMemoryUse* use,
                           inference::ModelInferResponse& response) {
  response.set_model_name(request.model_name());
  response.set_model_version(VersionText(version));
  response.set_id(request.id());
  (*response.mutable_parameters())["weights_version"].set_string_param(result.weights_version);
  if (!use) {
    EncodeKServeOutputs(result.outputs, response);
    return Status::Ok();
  }
  return EncodeKServeOutputs(result.outputs, *use, response);
}

grpc::ServerUnaryReactor* KServeService::ModelInfer(grpc::CallbackServerContext* ctx,
                                                    const inference::ModelInferRequest* request,
                                                    inference::ModelInferResponse* response) {
  const auto received = Clock::now();
  auto* reactor = new InferReactor();
  InferRequest infer;
  int64_t version = kServingVersion;
  // Holds the request's shared-memory mappings until the reply is written.
  std::shared_ptr<SharedMemoryUse> use;
  if (options_.shared_memory) use = std::make_shared<SharedMemoryUse>();
  if (Status built = BuildInferRequest(*request, ctx->deadline(), options_.shared_memory,
                                       use.get(), infer, version);
      !built.ok()) {
    core_.RecordEarlyFailure(Protocol::kKServe, request->model_name(), request->id(), built,
                             received);
    reactor->Finish(ToGrpcStatus(built));
    return reactor;
  }
  core_.Start(reactor->call(), Protocol::kKServe, request->model_name(), version,
              std::move(infer), received, Clock::now() - received,
              Reply{[request, response, use](InferResponse& result, int64_t served) {
                      return EncodeInferResponse(*request, result, served, use.get(), *response);
                    },
                    [reactor](const Status& status) { reactor->Finish(ToGrpcStatus(status)); }});
  return reactor;
}

namespace {

Status SharedMemoryOff(std::string_view rpc) {
  return Unimplemented(std::string(rpc) +
                       ": system shared memory is off on this server; enable it with "
                       "server.shared_memory: system in the config (or --shared-memory "
                       "system), see docs/shared-memory.md");
}

}  // namespace

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryStatus(
    grpc::CallbackServerContext* ctx, const inference::SystemSharedMemoryStatusRequest* request,
    inference::SystemSharedMemoryStatusResponse* response) {
  if (!options_.shared_memory) return FinishUnary(ctx, SharedMemoryOff("SystemSharedMemoryStatus"));
  auto regions = options_.shared_memory->List(request->name());
  if (!regions.ok()) return FinishUnary(ctx, regions.status());
  for (const SharedMemoryRegionInfo& r : *regions) {
    auto& out = (*response->mutable_regions())[r.name];
    out.set_name(r.name);
    out.set_key(r.key);
    out.set_offset(r.offset);
    out.set_byte_size(r.byte_size);
  }
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryRegister(
    grpc::CallbackServerContext* ctx, const inference::SystemSharedMemoryRegisterRequest* request,
    inference::SystemSharedMemoryRegisterResponse*) {
  if (!options_.shared_memory) {
    return FinishUnary(ctx, SharedMemoryOff("SystemSharedMemoryRegister"));
  }
  Status registered = options_.shared_memory->Register(request->name(), request->key(),
                                                       request->offset(), request->byte_size());
  if (registered.ok()) {
    Logger("kserve")->info("shared memory region '{}' registered: key '{}', offset {}, {} bytes "
                           "(peer {})",
                           Printable(request->name()), Printable(request->key()),
                           request->offset(), request->byte_size(), Printable(ctx->peer()));
  }
  return FinishUnary(ctx, registered);
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryUnregister(
    grpc::CallbackServerContext* ctx,
    const inference::SystemSharedMemoryUnregisterRequest* request,
    inference::SystemSharedMemoryUnregisterResponse*) {
  if (!options_.shared_memory) {
    return FinishUnary(ctx, SharedMemoryOff("SystemSharedMemoryUnregister"));
  }
  if (const size_t dropped = options_.shared_memory->Unregister(request->name()); dropped > 0) {
    Logger("kserve")->info("{} shared memory region(s) unregistered{} (peer {})", dropped,
                           request->name().empty() ? "" : ": '" + Printable(request->name()) + "'",
                           Printable(ctx->peer()));
  }
  return FinishUnary(ctx, Status::Ok());
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* KServeService::ModelStreamInfer(
    grpc::CallbackServerContext* ctx) {
  return new StreamInferReactor(core_, options_.shared_memory, ctx);
}

}  // namespace pt2serve::server
