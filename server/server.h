// Server: the pt2serve daemon's parts wired together.
//
// Owns the model registry, the gRPC listeners (inference: KServe v2 +
// pt2serve.v1 + health + reflection; admin: pt2serve.v1.Admin behind a
// bearer token), metrics and statistics. Start() binds every listener, then
// loads the configured models; the server reports ready (ServerReady,
// grpc.health.v1 "") only once every configured model is READY and runs the
// weights its config names (ModelEntry::weights_file).
//
// Health services: "" and the API names (readiness: all models ready, not
// draining), one per model name, and "liveness", SERVING from start until
// Shutdown() (also while draining), for liveness probes that must not
// restart a pod that is loading or draining.
//
// Termination: BeginDrain() (SIGTERM) turns readiness NOT_SERVING at once
// while requests are still served; Shutdown() after the drain delay closes
// the listeners and drains in-flight requests.
//
// Thread-safety: Start/Shutdown from one thread; accessors from any.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>

#include "common/status.h"
#include "config/server_config.h"
#include "runtime/model_registry.h"
#include "server/fault_injection.h"

namespace grpc {
class Server;
}

namespace pt2serve::server {

// grpc.health.v1 service that stays SERVING from start until Shutdown().
inline constexpr std::string_view kLivenessService = "liveness";

class Metrics;
class StatsTable;
class InferenceCore;
class ModelRepository;
class KServeService;
class InferenceService;
class SharedMemoryRegistry;
class AdminService;

class Server {
 public:
  // Binds the listeners and loads config.models. Fails only when a listener
  // cannot be bound or the config is invalid; a model that fails to load is
  // reported (FAILED + reason) and the others still serve. `faults`: test
  // only (PT2SERVE_FAULT_INJECT), installed on every model that loads.
  static StatusOr<std::unique_ptr<Server>> Start(const ServerConfig& config,
                                                 FaultInjection faults = {});
  // Shuts down if still running.
  ~Server();

  // Reports NOT_SERVING on every readiness health service (and ServerReady
  // false) while still serving requests, so endpoints are removed before the
  // listeners close. Idempotent; Shutdown() still has to follow.
  void BeginDrain();

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
  // Stages entry.weights_file and swaps it in; the model stays not ready on
  // the health service until this succeeded (for ever if it failed).
  Status ApplyStartupWeights(const ModelEntry& entry);
  void OnStateChange(const ModelStatus& status);
  void UpdateHealth();
  // Whether the server is ready (health "", KServe ServerReady): start-up
  // loads done (configured models, and the repository's in modes all/poll),
  // not draining, start-up weights live, at least one model READY and none
  // FAILED or RESTARTING. A model LOADING or UNLOADING after start-up (an
  // admin or repository load, a poll adding or removing a model) changes
  // only that model's own status: readiness is the whole pod's, and must not
  // flap whenever one model comes or goes. Any thread.
  bool Ready() const;

  ServerConfig config_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<StatsTable> stats_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<InferenceCore> core_;
  std::unique_ptr<ModelRepository> repository_;
  std::unique_ptr<SharedMemoryRegistry> shared_memory_;  // null: extension off
  std::unique_ptr<KServeService> kserve_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> inference_server_;
  std::unique_ptr<grpc::Server> admin_server_;
  int inference_port_ = 0;
  int admin_port_ = 0;
  std::atomic<bool> shut_down_{false};  // read by health updates on any thread
  std::atomic<bool> draining_{false};
  std::atomic<bool> started_{false};  // start-up loads are done
  // Models whose start-up weights are not (yet) live; they report not ready.
  mutable std::mutex pending_mu_;
  std::set<std::string> weights_pending_;  // guarded by pending_mu_
};

// Maps a config entry onto the runtime's model options.
ModelConfig ToModelConfig(const ModelEntry& entry);

}  // namespace pt2serve::server
