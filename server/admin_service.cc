#include "server/admin_service.h"

#include <thread>

#include "server/inference_service.h"
#include "server/logging.h"
#include "server/status_mapping.h"

namespace pt2serve::server {
namespace {

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

grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* ctx, const Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

AdminService::AdminService(ModelRegistry& registry, ModelRepository& repository,
                           std::string token)
    : registry_(registry), repository_(repository), token_(std::move(token)) {}

AdminService::~AdminService() {
  std::unique_lock lock(background_mu_);
  background_done_.wait(lock, [&] { return background_ == 0; });
}

void AdminService::RunInBackground(std::function<void()> work) {
  {
    std::lock_guard lock(background_mu_);
    ++background_;
  }
  std::thread([this, work = std::move(work)] {
    work();
    std::lock_guard lock(background_mu_);
    if (--background_ == 0) background_done_.notify_all();
  }).detach();
}

Status AdminService::Authenticate(grpc::CallbackServerContext* ctx) const {
  if (token_.empty()) {
    return Unauthenticated("the admin API has no token configured (server.admin_auth)");
  }
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return Unauthenticated("missing 'authorization: Bearer <token>' metadata");
  std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kPrefix = "Bearer ";
  if (!value.starts_with(kPrefix) || !ConstantTimeEquals(value.substr(kPrefix.size()), token_)) {
    return Unauthenticated("invalid admin token");
  }
  return Status::Ok();
}

grpc::ServerUnaryReactor* AdminService::LoadModel(grpc::CallbackServerContext* ctx,
                                                  const pt2serve::v1::LoadModelRequest* request,
                                                  pt2serve::v1::LoadModelResponse* response) {
  if (Status auth = Authenticate(ctx); !auth.ok()) return Reply(ctx, auth);
  if (!ValidName(request->name())) {
    return Reply(ctx, InvalidArgument("model name '" + request->name() +
                                      "' must be non-empty and use only [A-Za-z0-9_.-]"));
  }
  if (request->num_runners() < 0 || request->max_queue_size() < 0) {
    return Reply(ctx, InvalidArgument("num_runners and max_queue_size must not be negative"));
  }
  ModelConfig config = repository_.defaults();
  config.name = request->name();
  config.path = request->package_path();
  if (!request->device().empty()) config.device = request->device();
  if (request->num_runners() > 0) config.num_runners = static_cast<size_t>(request->num_runners());
  if (request->max_queue_size() > 0) {
    config.max_queue_size = static_cast<size_t>(request->max_queue_size());
  }
  auto* reactor = ctx->DefaultReactor();
  // Loading takes a while (package extraction, dlopen): off the gRPC thread.
  RunInBackground([this, reactor, config, response] {
    Status status = repository_.Load(config);
    if (status.ok()) {
      if (auto st = registry_.GetStatus(config.name); st.ok()) {
        FillModelSummary(*st, registry_, *response->mutable_model());
      }
    }
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::UnloadModel(
    grpc::CallbackServerContext* ctx, const pt2serve::v1::UnloadModelRequest* request,
    pt2serve::v1::UnloadModelResponse*) {
  if (Status auth = Authenticate(ctx); !auth.ok()) return Reply(ctx, auth);
  auto* reactor = ctx->DefaultReactor();
  // Unloading waits for in-flight requests: off the gRPC thread.
  RunInBackground([this, reactor, name = request->name()] {
    reactor->Finish(ToGrpcStatus(repository_.Unload(name)));
  });
  return reactor;
}

}  // namespace pt2serve::server
