#include "server/admin_service.h"

#include <algorithm>
#include <thread>

#include "common/limits.h"
#include "server/batching_convert.h"
#include "server/inference_service.h"
#include "server/logging.h"
#include "server/memory_convert.h"
#include "server/status_mapping.h"
#include "server/tensor_codec.h"
#include "server/update_reactor.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/model.h"

namespace pt2serve::server {
namespace {

// Same bound as models[].num_runners in the config file.
constexpr int kMaxRunners = 64;

// Compares in time independent of where the strings differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

bool ValidName(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-')) {
      return false;
    }
  }
  return true;
}


int64_t Micros(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

void FillBuffer(const WeightSetInfo& info, pt2serve::v1::BufferState state,
                pt2serve::v1::BufferInfo* out) {
  out->set_state(state);
  out->set_version(info.version);
  out->set_sha256(info.sha256);
  out->set_bytes(info.bytes);
  out->set_source(info.source);
  const auto since_epoch = info.updated_at.time_since_epoch();
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  out->mutable_updated_at()->set_seconds(secs.count());
  out->mutable_updated_at()->set_nanos(static_cast<int32_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch - secs).count()));
}

pt2serve::v1::BufferState ToProto(InactiveState state) {
  switch (state) {
    case InactiveState::kEmpty: return pt2serve::v1::EMPTY;
    case InactiveState::kStaged: return pt2serve::v1::STAGED;
    case InactiveState::kPrevious: return pt2serve::v1::PREVIOUS;
  }
  return pt2serve::v1::BUFFER_STATE_UNSPECIFIED;
}

}  // namespace

AdminService::AdminService(ModelRegistry& registry, ModelRepository& repository,
                           std::string token, std::chrono::milliseconds upload_idle_timeout)
    : registry_(registry),
      repository_(repository),
      token_(std::move(token)),
      upload_idle_timeout_(upload_idle_timeout),
      watchdog_([this] { WatchUploads(); }) {}

AdminService::~AdminService() {
  {
    std::lock_guard lock(uploads_mu_);
    stopping_ = true;
  }
  watchdog_wake_.notify_all();
  watchdog_.join();
  std::unique_lock lock(background_mu_);
  background_done_.wait(lock, [&] { return background_ == 0; });
}

void AdminService::WatchUploads() {
  // Checking four times per timeout ends an idle upload within 1.25x of it.
  const auto period = std::max<std::chrono::milliseconds>(upload_idle_timeout_ / 4,
                                                          std::chrono::milliseconds(10));
  const std::string why = "no message for " + std::to_string(upload_idle_timeout_.count()) +
                          " ms (server.upload_idle_timeout_ms)";
  std::unique_lock lock(uploads_mu_);
  while (!watchdog_wake_.wait_for(lock, period, [&] { return stopping_; })) {
    std::vector<std::shared_ptr<UploadGuard>> live;
    for (const auto& [model, guard] : uploads_) live.push_back(guard);
    lock.unlock();  // Expire takes the guard's mutex, which is never held with uploads_mu_
    const auto idle_since = std::chrono::steady_clock::now() - upload_idle_timeout_;
    for (const auto& guard : live) UpdateReactor::Expire(guard, idle_since, why);
    lock.lock();
  }
}

Status AdminService::RunInBackground(std::function<void()> work) {
  {
    std::lock_guard lock(background_mu_);
    if (background_ >= kMaxAdminBackground) {
      return ResourceExhausted("too many admin operations in progress (" +
                               std::to_string(kMaxAdminBackground) + "); retry when one finished");
    }
    ++background_;
  }
  std::thread([this, work = std::move(work)] {
    work();
    std::lock_guard lock(background_mu_);
    if (--background_ == 0) background_done_.notify_all();
  }).detach();
  return Status::Ok();
}

StatusOr<ModelHandle> AdminService::AuthorizedModel(grpc::CallbackServerContext* ctx,
                                                    const std::string& model) {
  PT2_RETURN_IF_ERROR(Authenticate(ctx));
  PT2_RETURN_IF_ERROR(CheckLength("model name", model, kMaxModelNameBytes));
  return registry_.Get(model);
}

Status AdminService::Authenticate(grpc::CallbackServerContext* ctx) {
  const std::string peer = ctx->peer();
  PT2_RETURN_IF_ERROR(throttle_.Admit(peer));
  Status result = Status::Ok();
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  constexpr std::string_view kPrefix = "Bearer ";
  if (token_.empty()) {
    result = Unauthenticated("the admin API has no token configured (server.admin_auth)");
  } else if (it == md.end()) {
    result = Unauthenticated("missing 'authorization: Bearer <token>' metadata");
  } else if (std::string_view value(it->second.data(), it->second.size());
             !value.starts_with(kPrefix) ||
             !ConstantTimeEquals(value.substr(kPrefix.size()), token_)) {
    result = Unauthenticated("invalid admin token");
  }
  if (!result.ok()) throttle_.RecordFailure(peer, result);
  return result;
}

namespace {

// LoadModelRequest's declared inputs/outputs/max_batch_size as a Signature.
StatusOr<Signature> DeclaredSignature(const pt2serve::v1::LoadModelRequest& request) {
  if (request.inputs_size() == 0 || request.outputs_size() == 0) {
    return InvalidArgument("a declared signature needs both inputs and outputs");
  }
  if (request.max_batch_size() < 0) {
    return InvalidArgument("max_batch_size must not be negative");
  }
  Signature sig;
  auto convert = [](const pt2serve::v1::TensorSpec& in, const char* what,
                    std::vector<TensorSpec>* out) -> Status {
    if (in.name().empty()) return InvalidArgument(std::string("a declared ") + what + " has no name");
    auto dtype = FromProtoDType(in.dtype());
    if (!dtype.ok()) return dtype.status().WithPrefix(std::string(what) + " '" + in.name() + "'");
    TensorSpec spec{in.name(), *dtype, {in.shape().begin(), in.shape().end()}, {}};
    if (in.dims_size() > 0 && in.dims_size() != in.shape_size()) {
      return InvalidArgument(std::string(what) + " '" + in.name() +
                             "': dims needs one entry per dim of shape");
    }
    for (const auto& d : in.dims()) {
      const int64_t max = d.max() < 0 ? DimRange::kUnbounded : d.max();
      if (d.min() < 0 || max < d.min()) {
        return InvalidArgument(std::string(what) + " '" + in.name() + "': bad dim range " +
                               std::to_string(d.min()) + ".." + std::to_string(d.max()));
      }
      spec.dims.push_back(DimRange{d.min(), max, d.symbol()});
    }
    for (int64_t d : spec.shape) {
      if (d < -1) {
        return InvalidArgument(std::string(what) + " '" + in.name() + "': dim " +
                               std::to_string(d) + " (want >= 0, or -1 for dynamic)");
      }
    }
    out->push_back(std::move(spec));
    return Status::Ok();
  };
  for (const auto& in : request.inputs()) PT2_RETURN_IF_ERROR(convert(in, "input", &sig.inputs));
  for (const auto& o : request.outputs()) PT2_RETURN_IF_ERROR(convert(o, "output", &sig.outputs));
  sig.max_batch_size = request.max_batch_size();
  return sig;
}

}  // namespace

grpc::ServerUnaryReactor* AdminService::LoadModel(grpc::CallbackServerContext* ctx,
                                                  const pt2serve::v1::LoadModelRequest* request,
                                                  pt2serve::v1::LoadModelResponse* response) {
  if (Status auth = Authenticate(ctx); !auth.ok()) return FinishUnary(ctx, auth);
  if (Status length = CheckLength("model name", request->name(), kMaxModelNameBytes);
      !length.ok()) {
    return FinishUnary(ctx, length);
  }
  if (!ValidName(request->name())) {
    return FinishUnary(ctx, InvalidArgument("model name '" + Printable(request->name()) +
                                      "' must be non-empty and use only [A-Za-z0-9_.-]"));
  }
  if (Status length = CheckLength("package_path", request->package_path(), kMaxPathBytes);
      !length.ok()) {
    return FinishUnary(ctx, length);
  }
  if (request->num_runners() < 0 || request->max_queue_size() < 0) {
    return FinishUnary(ctx, InvalidArgument("num_runners and max_queue_size must not be negative"));
  }
  if (request->num_runners() > kMaxRunners) {
    return FinishUnary(ctx, InvalidArgument("num_runners must be in 1.." +
                                            std::to_string(kMaxRunners) + " (0 = default), got " +
                                            std::to_string(request->num_runners())));
  }
  if (request->cpu_threads() < 0 || request->cpu_threads() > kMaxCpuThreads) {
    // Checked before the load starts, so a bad request leaves no FAILED model behind.
    return FinishUnary(ctx, InvalidArgument("cpu_threads must be in 0.." +
                                            std::to_string(kMaxCpuThreads) +
                                            " (0 = the process default), got " +
                                            std::to_string(request->cpu_threads())));
  }
  const auto isolation = request->isolation().empty()
                             ? std::optional<Isolation>(Isolation::kInProcess)
                             : IsolationFromName(request->isolation());
  if (!isolation) {
    return FinishUnary(ctx, InvalidArgument("isolation must be 'in_process' or 'process', got '" +
                                            Printable(request->isolation()) + "'"));
  }
  const bool options = !request->device().empty() || request->num_runners() != 0 ||
                       request->max_queue_size() != 0 || request->cpu_threads() != 0 ||
                       !request->isolation().empty() || request->inputs_size() > 0 ||
                       request->outputs_size() > 0 || request->max_batch_size() != 0;
  if (request->package_path().empty() && options) {
    // A load by name takes a repository model's options from its config.yaml.
    return FinishUnary(ctx, InvalidArgument("model '" + request->name() +
                                            "': options need a package_path; a repository "
                                            "model loaded by name takes them from its "
                                            "config.yaml"));
  }
  ModelConfig config = repository_.defaults();
  config.isolation = *isolation;
  if (request->has_dynamic_batching()) {
    config.batching = BatchingFromProto(request->dynamic_batching());
  }
  config.name = request->name();
  config.path = request->package_path();
  if (!request->device().empty()) config.device = request->device();
  if (request->num_runners() > 0) config.num_runners = static_cast<size_t>(request->num_runners());
  if (request->max_queue_size() > 0) {
    config.max_queue_size = static_cast<size_t>(request->max_queue_size());
  }
  config.cpu_threads = request->cpu_threads();
  if (request->inputs_size() > 0 || request->outputs_size() > 0 ||
      request->max_batch_size() != 0) {
    auto declared = DeclaredSignature(*request);
    if (!declared.ok()) return FinishUnary(ctx, declared.status());
    config.signature = std::move(*declared);
  }
  auto* reactor = ctx->DefaultReactor();
  // Loading takes a while (package extraction, dlopen): off the gRPC thread.
  // A failed load leaves no entry (ModelRepository::Load): the caller gets
  // the error and server readiness is unaffected.
  Status started = RunInBackground([this, reactor, config, response] {
    Status status = repository_.Load(config);
    if (status.ok()) {
      if (auto st = registry_.GetStatus(config.name); st.ok()) {
        FillModelSummary(*st, registry_, *response->mutable_model());
      }
    }
    reactor->Finish(ToGrpcStatus(status));
  });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::UnloadModel(
    grpc::CallbackServerContext* ctx, const pt2serve::v1::UnloadModelRequest* request,
    pt2serve::v1::UnloadModelResponse*) {
  if (Status auth = Authenticate(ctx); !auth.ok()) return FinishUnary(ctx, auth);
  if (Status length = CheckLength("model name", request->name(), kMaxModelNameBytes);
      !length.ok()) {
    return FinishUnary(ctx, length);
  }
  auto* reactor = ctx->DefaultReactor();
  // Unloading waits for in-flight requests: off the gRPC thread.
  Status started = RunInBackground([this, reactor, name = request->name()] {
    reactor->Finish(ToGrpcStatus(repository_.Unload(name)));
  });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}


bool AdminService::AddUpload(const std::string& model, std::shared_ptr<UploadGuard> upload) {
  std::lock_guard lock(uploads_mu_);
  uploads_.emplace(model, std::move(upload));
  return !uploads_refused_;
}

void AdminService::RemoveUpload(const std::shared_ptr<UploadGuard>& upload) {
  std::lock_guard lock(uploads_mu_);
  for (auto it = uploads_.begin(); it != uploads_.end(); ++it) {
    if (it->second == upload) {
      uploads_.erase(it);
      return;
    }
  }
}

void AdminService::AbortUploads(const std::string& model) {
  std::vector<std::shared_ptr<UploadGuard>> targets;
  {
    std::lock_guard lock(uploads_mu_);
    auto [begin, end] = uploads_.equal_range(model);
    for (auto it = begin; it != end; ++it) targets.push_back(it->second);
  }
  for (const auto& guard : targets) UpdateReactor::Abort(guard, "the model is being unloaded");
}

void AdminService::StopUploads() {
  std::vector<std::shared_ptr<UploadGuard>> targets;
  {
    std::lock_guard lock(uploads_mu_);
    uploads_refused_ = true;
    for (const auto& [model, guard] : uploads_) targets.push_back(guard);
  }
  for (const auto& guard : targets) UpdateReactor::Abort(guard, "the server is shutting down");
}

grpc::ServerReadReactor<grpc::ByteBuffer>* AdminService::UpdateConstantBuffer(
    grpc::CallbackServerContext* ctx, grpc::ByteBuffer* response) {
  return new UpdateReactor(*this, ctx, response);
}

grpc::ServerUnaryReactor* AdminService::SwapLike(grpc::CallbackServerContext* ctx,
                                                 const std::string& model,
                                                 const std::string& expected_version,
                                                 const std::string& expected_active,
                                                 pt2serve::v1::SwapResponse* response,
                                                 bool rollback) {
  auto handle = AuthorizedModel(ctx, model);
  if (!handle.ok()) return FinishUnary(ctx, handle.status());
  for (Status length : {CheckLength("expected_version", expected_version, kMaxVersionLabelBytes),
                        CheckLength("expected_active_version", expected_active,
                                    kMaxVersionLabelBytes)}) {
    if (!length.ok()) return FinishUnary(ctx, length);
  }
  auto* reactor = ctx->DefaultReactor();
  auto shared = std::make_shared<ModelHandle>(std::move(handle).value());
  // A swap waits for in-flight requests (about one inference): off the gRPC thread.
  Status started = RunInBackground([this, reactor, response, shared, model, expected_version,
                                    expected_active, rollback] {
    auto& weights = (*shared)->weights();
    auto result = rollback ? weights.Rollback() : weights.Swap(expected_version, expected_active);
    if (result.ok()) {
      response->set_model(model);
      response->set_active_version(result->active_version);
      response->set_previous_version(result->previous_version);
      response->set_swap_time_us(Micros(result->swap_time));
      response->set_already_active(result->already_active);
      if (result->already_active) {
        Logger("admin")->info("model '{}': swap to '{}': already active, nothing changed", model,
                              result->active_version);
      } else {
        Logger("admin")->info(
            "model '{}': {} -> weights '{}' active (was '{}'; drain {} us, swap {} us)", model,
            rollback ? "rollback" : "swap", result->active_version, result->previous_version,
            Micros(result->wait_time), Micros(result->swap_time));
      }
    } else {
      RecordError(model, rollback ? "rollback" : "swap", result.status());
    }
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::SwapConstantBuffer(grpc::CallbackServerContext* ctx,
                                                           const pt2serve::v1::SwapRequest* request,
                                                           pt2serve::v1::SwapResponse* response) {
  return SwapLike(ctx, request->model(), request->expected_version(),
                  request->expected_active_version(), response, false);
}

grpc::ServerUnaryReactor* AdminService::Rollback(grpc::CallbackServerContext* ctx,
                                                 const pt2serve::v1::RollbackRequest* request,
                                                 pt2serve::v1::SwapResponse* response) {
  return SwapLike(ctx, request->model(), "", "", response, true);
}

grpc::ServerUnaryReactor* AdminService::FreeInactiveConstantBuffer(
    grpc::CallbackServerContext* ctx, const pt2serve::v1::FreeInactiveRequest* request,
    pt2serve::v1::FreeInactiveResponse* response) {
  auto handle = AuthorizedModel(ctx, request->model());
  if (!handle.ok()) return FinishUnary(ctx, handle.status());
  auto* reactor = ctx->DefaultReactor();
  auto shared = std::make_shared<ModelHandle>(std::move(handle).value());
  Status started = RunInBackground([this, reactor, response, shared, model = request->model()] {
    auto freed = (*shared)->weights().FreeInactive();
    if (freed.ok()) {
      response->set_model(model);
      response->set_freed_bytes(*freed);
      Logger("admin")->info("model '{}': inactive weights freed ({} bytes)", model, *freed);
    } else {
      RecordError(model, "free-inactive", freed.status());
    }
    reactor->Finish(ToGrpcStatus(freed.status()));
  });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetConstantBufferStatus(
    grpc::CallbackServerContext* ctx, const pt2serve::v1::ConstantBufferStatusRequest* request,
    pt2serve::v1::ConstantBufferStatus* response) {
  auto handle = AuthorizedModel(ctx, request->model());
  if (!handle.ok()) return FinishUnary(ctx, handle.status());
  const BufferStatus st = (*handle)->weights().status();
  response->set_model(request->model());
  FillBuffer(st.active, pt2serve::v1::ACTIVE, response->mutable_active());
  FillBuffer(st.inactive, ToProto(st.inactive_state), response->mutable_inactive());
  response->set_bytes_in_use(st.bytes_in_use);
  WeightsMemoryToProto(st, registry_.staging_budget(), response->mutable_memory());
  {
    std::lock_guard lock(errors_mu_);
    if (auto it = last_errors_.find(request->model()); it != last_errors_.end()) {
      response->set_last_error(it->second.text);
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          it->second.at.time_since_epoch()).count();
      response->mutable_last_error_at()->set_seconds(ns / 1'000'000'000);
      response->mutable_last_error_at()->set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
    }
  }
  return FinishUnary(ctx, Status::Ok());
}

void AdminService::RecordError(const std::string& model, std::string_view operation,
                               const Status& error) {
  std::lock_guard lock(errors_mu_);
  last_errors_[model] = {std::string(operation) + ": " + error.ToString(),
                         std::chrono::system_clock::now()};
}

}  // namespace pt2serve::server
