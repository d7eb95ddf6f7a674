// Server: the pt2serve daemon's parts wired together.
//
// Owns the model registry, the gRPC listeners (inference: KServe v2 +
// pt2serve.v1 + health + reflection; admin: pt2serve.v1.Admin behind a
// bearer token), metrics and statistics. Start() binds every listener, then
// loads the configured models; the server reports ready (ServerReady,
// grpc.health.v1 "") only once every configured model is READY.
//
// Thread-safety: Start/Shutdown from one thread; accessors from any.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "config/server_config.h"
#include "runtime/model_registry.h"

namespace grpc {
class Server;
}

namespace pt2serve::server {

class Metrics;
class StatsTable;
class InferenceCore;
class ModelRepository;
class KServeService;
class InferenceService;
class AdminService;

class Server {
 public:
  // Binds the listeners and loads config.models. Fails only when a listener
  // cannot be bound or the config is invalid; a model that fails to load is
  // reported (FAILED + reason) and the others still serve.
  static StatusOr<std::unique_ptr<Server>> Start(const ServerConfig& config);
  // Shuts down if still running.
  ~Server();

  // Stops accepting requests, lets in-flight ones finish (up to the
  // configured drain timeout), then unloads every model. Idempotent.
  void Shutdown();

  // Blocks until every configured model has left LOADING.
  ModelRegistry& registry() { return *registry_; }
  int inference_port() const { return inference_port_; }
  int admin_port() const { return admin_port_; }
  int metrics_port() const;

 private:
  Server() = default;
  Status BuildListeners();
  void LoadConfiguredModels();
  void OnStateChange(const ModelStatus& status);
  void UpdateHealth();

  ServerConfig config_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<StatsTable> stats_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<InferenceCore> core_;
  std::unique_ptr<ModelRepository> repository_;
  std::unique_ptr<KServeService> kserve_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> inference_server_;
  std::unique_ptr<grpc::Server> admin_server_;
  int inference_port_ = 0;
  int admin_port_ = 0;
  bool shut_down_ = false;
};

// Maps a config entry onto the runtime's model options.
ModelConfig ToModelConfig(const ModelEntry& entry);

}  // namespace pt2serve::server
