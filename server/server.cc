#include "server/server.h"

#include "server/batching_convert.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/limits.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/model.h"
#include "server/admin_service.h"
#include "server/inference_core.h"
#include "server/inference_service.h"
#include "server/kserve_service.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/model_repository.h"
#include "server/model_stats.h"
#include "server/shared_memory_registry.h"
#include "server/version.h"

namespace pt2serve::server {
namespace {

// Reads a PEM file for `what` (e.g. "server.tls.admin.key_file") and checks
// that it holds a PEM block whose label contains `label`; gRPC itself only
// fails later, at BuildAndStart, without naming the file.
StatusOr<std::string> ReadPem(const std::string& path, const std::string& what,
                              std::string_view label) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return InvalidArgument(what + " '" + path + "' is a directory, not a PEM file");
  }
  std::ifstream in(path);
  if (!in) return NotFound(what + " '" + path + "' cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  const auto begin = pem.find("-----BEGIN ");
  if (begin == std::string::npos || pem.find(label, begin) == std::string::npos) {
    return InvalidArgument(what + " '" + path + "' holds no PEM " + std::string(label));
  }
  return pem;
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const TlsConfig& tls,
                                                               const std::string& key) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  PT2_ASSIGN_OR_RETURN(pair.private_key, ReadPem(tls.key_file, key + ".key_file", "PRIVATE KEY"));
  PT2_ASSIGN_OR_RETURN(pair.cert_chain,
                       ReadPem(tls.cert_file, key + ".cert_file", "CERTIFICATE"));
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!tls.client_ca_file.empty()) {
    PT2_ASSIGN_OR_RETURN(options.pem_root_certs,
                         ReadPem(tls.client_ca_file, key + ".client_ca_file", "CERTIFICATE"));
    options.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// Why a listener did not start. gRPC reports a taken port and TLS material
// it rejects (a key that does not match its certificate, say) the same way.
Status ListenError(const std::string& address, const TlsConfig& tls, const std::string& key) {
  if (!tls.enabled()) return Unavailable("cannot listen on " + address);
  return Unavailable("cannot listen on " + address + " with the TLS material of " + key +
                     " (cert_file '" + tls.cert_file + "', key_file '" + tls.key_file +
                     "'): the address is taken, or gRPC rejected the certificate or key "
                     "(do they match? see the log above)");
}

}  // namespace

ModelConfig ToModelConfig(const ModelEntry& entry) {
  ModelConfig c;
  c.name = entry.name;
  c.path = entry.path;
  c.device = entry.device;
  c.num_runners = static_cast<size_t>(entry.num_runners);
  c.max_queue_size = static_cast<size_t>(entry.max_queue_size);
  c.default_timeout = std::chrono::milliseconds(entry.timeout_ms);
  c.cpu_threads = entry.cpu_threads;
  // ValidateServerConfig accepted only known names.
  c.isolation = IsolationFromName(entry.isolation).value_or(Isolation::kInProcess);
  // With a weights_file, weights_version names that file's weights
  // (ApplyStartupWeights); the package's own are then "initial".
  c.initial_weights_version = entry.weights_file.empty() ? entry.weights_version : "initial";
  c.signature = entry.signature;
  if (entry.dynamic_batching) c.batching = BatchingFromEntry(*entry.dynamic_batching);
  c.weights_staging_budget_bytes = static_cast<size_t>(entry.weights_staging_budget_bytes);
  return c;
}

StatusOr<std::unique_ptr<Server>> Server::Start(const ServerConfig& config,
                                                FaultInjection faults) {
  PT2_RETURN_IF_ERROR(ValidateServerConfig(config));
  std::error_code ec;
  if (config.repository_mode != "explicit" &&
      !std::filesystem::is_directory(config.model_repository, ec)) {
    return FailedPrecondition("server.model_repository '" + config.model_repository +
                              "' is not a directory (repository_mode " +
                              config.repository_mode + " serves the models in it)");
  }
  std::unique_ptr<Server> server(new Server);
  server->config_ = config;
  server->registry_ = std::make_unique<ModelRegistry>(std::make_shared<StagingBudget>(
      static_cast<size_t>(config.weights_staging_budget_bytes)));
  if (!faults.empty()) {
    Logger("server")->warn("FAULT INJECTION IS ON ({}={}): weight operations will fail on "
                           "purpose; for tests only, never in production",
                           kFaultInjectEnv, faults.spec());
    server->registry_->SetLoadedHook([faults](Model& model) { faults.Install(model); });
  }
  server->stats_ = std::make_unique<StatsTable>();
  PT2_ASSIGN_OR_RETURN(server->metrics_,
                       Metrics::Create(config.metrics_address, *server->registry_));
  server->registry_->AddObserver([s = server.get()](const ModelStatus& st) { s->OnStateChange(st); });
  server->core_ = std::make_unique<InferenceCore>(*server->registry_, *server->metrics_,
                                                  *server->stats_, config.access_log);
  RepositoryOptions repository;
  repository.root = config.model_repository;
  repository.mode = config.repository_mode;
  for (const ModelEntry& entry : config.models) repository.configured.insert(entry.name);
  repository.drain_timeout = std::chrono::milliseconds(config.drain_timeout_ms);
  server->repository_ = std::make_unique<ModelRepository>(*server->registry_,
                                                          std::move(repository));
  PT2_RETURN_IF_ERROR(server->BuildListeners());
  server->LoadConfiguredModels();
  if (config.repository_mode != "explicit") {
    // Every model found; failures are logged and listed by RepositoryIndex.
    server->repository_->Sync();
  }
  server->started_ = true;
  server->UpdateHealth();
  if (config.repository_mode == "poll") {
    server->repository_->StartPolling(
        std::chrono::milliseconds(config.repository_poll_interval_ms));
  }
  return server;
}

Status Server::BuildListeners() {
  auto log = Logger("server");
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  if (config_.shared_memory == "system") {
    shared_memory_ = std::make_unique<SharedMemoryRegistry>(kMaxSharedMemoryRegions);
    log->warn("system shared memory is on: local processes that can reach the inference port "
              "can make the server read and write shared memory objects in /dev/shm");
  }
  kserve_ = std::make_unique<KServeService>(
      *registry_, *core_, *stats_, *repository_,
      KServeOptions{kVersion, config_.allow_repository_admin_on_inference_port,
                    [this] { return Ready(); }, shared_memory_.get()});
  inference_ = std::make_unique<InferenceService>(*registry_, *core_);
  {
    grpc::ServerBuilder builder;
    PT2_ASSIGN_OR_RETURN(auto creds, Credentials(config_.inference_tls, "server.tls.inference"));
    // No SO_REUSEPORT: a second daemon on the same address must fail to
    // start, not silently share the port with this one.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    if (config_.max_connection_age_ms > 0) {
      // GOAWAY after this age, so clients reconnect and rebalance after scale-out.
      builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, config_.max_connection_age_ms);
      builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                 config_.max_connection_age_grace_ms);
    }
    if (!config_.allow_compressed_requests) {
      // Only "identity": a compressed request is refused (UNIMPLEMENTED)
      // from its headers, before anything is inflated.
      builder.AddChannelArgument(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET,
                                 1 << GRPC_COMPRESS_NONE);
    }
    builder.AddListeningPort(config_.inference_address, creds, &inference_port_);
    builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(config_.max_message_bytes));
    builder.RegisterService(kserve_.get());
    builder.RegisterService(inference_.get());
    inference_server_ = builder.BuildAndStart();
    if (!inference_server_ || inference_port_ == 0) {
      return ListenError(config_.inference_address, config_.inference_tls,
                         "server.tls.inference");
    }
  }
  if (!config_.admin_address.empty()) {
    PT2_ASSIGN_OR_RETURN(std::string token, ResolveAdminToken(config_));
    if (token.empty()) {
      log->warn("admin listener {} has no token configured: admin RPCs are refused",
                config_.admin_address);
    }
    admin_ = std::make_unique<AdminService>(
        *registry_, *repository_, std::move(token),
        std::chrono::milliseconds(config_.upload_idle_timeout_ms));
    grpc::ServerBuilder builder;
    PT2_ASSIGN_OR_RETURN(auto creds, Credentials(config_.admin_tls, "server.tls.admin"));
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    // Weight uploads are large and trusted only after authentication, which
    // runs after decompression: never inflate on the admin port.
    builder.AddChannelArgument(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET,
                               1 << GRPC_COMPRESS_NONE);
    builder.AddListeningPort(config_.admin_address, creds, &admin_port_);
    builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
    builder.RegisterService(admin_.get());
    admin_server_ = builder.BuildAndStart();
    if (!admin_server_ || admin_port_ == 0) {
      return ListenError(config_.admin_address + " (admin)", config_.admin_tls, "server.tls.admin");
    }
  }
  UpdateHealth();
  log->info("pt2serve {} listening: inference {} (port {}), admin {} (port {}), metrics {} (port {})",
            kVersion, config_.inference_address, inference_port_,
            config_.admin_address.empty() ? "off" : config_.admin_address, admin_port_,
            config_.metrics_address.empty() ? "off" : config_.metrics_address, metrics_port());
  return Status::Ok();
}

void Server::LoadConfiguredModels() {
  {
    std::lock_guard lock(pending_mu_);
    for (const auto& entry : config_.models) {
      if (!entry.weights_file.empty()) weights_pending_.insert(entry.name);
    }
  }
  for (const auto& entry : config_.models) {
    // Failures are logged and reported through the registry (FAILED + reason).
    if (!registry_->Load(ToModelConfig(entry)).ok() || entry.weights_file.empty()) continue;
    if (Status applied = ApplyStartupWeights(entry); !applied.ok()) {
      Logger("registry")->error("model '{}' stays NOT_SERVING: its start-up weights '{}' ({}) "
                                "could not be made live: {}", entry.name, entry.weights_version,
                                entry.weights_file, applied.ToString());
      continue;
    }
    {
      std::lock_guard lock(pending_mu_);
      weights_pending_.erase(entry.name);
    }
    UpdateHealth();
  }
}

Status Server::ApplyStartupWeights(const ModelEntry& entry) {
  PT2_ASSIGN_OR_RETURN(ModelHandle handle, registry_->Get(entry.name));
  StageOptions options;
  options.version = entry.weights_version;
  options.sha256 = entry.weights_sha256;
  PT2_RETURN_IF_ERROR(handle->weights().StageFromFile(entry.weights_file, options));
  PT2_ASSIGN_OR_RETURN(SwapResult swapped, handle->weights().Swap(entry.weights_version));
  // The compiled-in set is not needed again: give its memory back.
  (void)handle->weights().FreeInactive();
  Logger("registry")->info("model '{}' serves start-up weights '{}' from {}", entry.name,
                           swapped.active_version, entry.weights_file);
  return Status::Ok();
}

void Server::OnStateChange(const ModelStatus& status) {
  auto log = Logger("registry");
  // Versions come from a model repository's version folders; a model with
  // only version 1 (the usual case) is logged without one.
  bool versioned = status.version != 1;
  for (const ModelStatus& other : registry_->ListVersions()) {
    versioned = versioned || (other.name == status.name && other.version != 1);
  }
  const std::string version = versioned ? " version " + std::to_string(status.version) : "";
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(status.load_duration).count();
  if (status.availability_change) {
    // A loaded model's own change: its worker died, came back, or it failed.
    if (status.state == ModelState::kReady) {
      log->info("model '{}'{} READY again ({} worker restart(s) so far)", status.name, version,
                status.restarts);
    } else {
      log->error("model '{}'{} {}: {}", status.name, version, ModelStateName(status.state),
                 status.reason);
    }
    UpdateHealth();
    return;
  }
  switch (status.state) {
    case ModelState::kLoading:
      log->info("model '{}'{} LOADING from {}", status.name, version, status.config.path);
      break;
    case ModelState::kFailed:
      log->error("model '{}'{} FAILED after {} ms: {}", status.name, version, ms, status.reason);
      break;
    case ModelState::kReady:
      log->info("model '{}'{} READY ({} ms, {} runner(s), {})", status.name, version, ms,
                status.config.num_runners, status.config.path);
      stats_->Reset(status.name);
      break;
    case ModelState::kUnloading:
      log->info("model '{}'{} UNLOADING", status.name, version);
      // An upload that is still receiving would hold the model: cancel it.
      if (admin_) admin_->AbortUploads(status.name);
      break;
    default:
      log->info("model '{}'{} {}", status.name, version, ModelStateName(status.state));
  }
  metrics_->RecordStateChange(status);
  UpdateHealth();
}

void Server::UpdateHealth() {
  if (!inference_server_) return;
  auto* health = inference_server_->GetHealthCheckService();
  if (!health) return;
  std::set<std::string> pending;
  {
    std::lock_guard lock(pending_mu_);
    pending = weights_pending_;
  }
  const bool serving = !shut_down_ && !draining_;
  const bool ready = !shut_down_ && Ready();
  health->SetServingStatus("", ready);
  health->SetServingStatus("inference.GRPCInferenceService", ready);
  health->SetServingStatus("pt2serve.v1.Inference", ready);
  health->SetServingStatus(std::string(kLivenessService), !shut_down_);
  for (const auto& s : registry_->List()) {
    health->SetServingStatus(
        s.name, s.state == ModelState::kReady && !pending.contains(s.name) && serving);
  }
}

bool Server::Ready() const {
  if (!started_ || draining_) return false;
  {
    std::lock_guard lock(pending_mu_);
    if (!weights_pending_.empty()) return false;
  }
  bool any_ready = false;
  for (const ModelStatus& s : registry_->List()) {
    if (s.state == ModelState::kReady) {
      any_ready = true;
    } else if (s.state != ModelState::kLoading && s.state != ModelState::kUnloading) {
      return false;  // FAILED or RESTARTING
    }
  }
  return any_ready;
}

void Server::BeginDrain() {
  if (draining_.exchange(true)) return;
  Logger("server")->info("draining: health NOT_SERVING, still serving requests for {} ms",
                         config_.drain_delay_ms);
  UpdateHealth();
}

int Server::metrics_port() const { return metrics_ ? metrics_->port() : 0; }

void Server::Shutdown() {
  if (shut_down_.exchange(true)) return;
  auto log = Logger("server");
  log->info("shutting down: draining in-flight requests (up to {} ms)", config_.drain_timeout_ms);
  if (inference_server_) {
    if (auto* health = inference_server_->GetHealthCheckService()) health->Shutdown();
  }
  const auto deadline =
      std::chrono::system_clock::now() + std::chrono::milliseconds(config_.drain_timeout_ms);
  // Uploads first: a stalled uploader would otherwise hold the admin
  // listener's shutdown until the deadline (pushed weights die with the
  // process anyway).
  if (admin_) admin_->StopUploads();
  if (admin_server_) admin_server_->Shutdown(deadline);
  if (inference_server_) inference_server_->Shutdown(deadline);
  // No poll may load while everything unloads.
  if (repository_) repository_->StopPolling();
  registry_->UnloadAll(std::chrono::milliseconds(config_.drain_timeout_ms));
  log->info("shutdown complete");
}

Server::~Server() {
  Shutdown();
  // Members go in reverse order: servers, services, core, metrics, registry.
}

}  // namespace pt2serve::server
