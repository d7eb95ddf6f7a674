// pt2serve: serves AOTInductor .pt2 packages over gRPC (KServe v2 and
// pt2serve.v1), with an admin API for hot-swapping weights.
//
//   pt2serve                                   # the bundled demo model
//   pt2serve --config config/pt2serve.example.yaml
//   pt2serve --model mlp=/path/mlp.pt2 --model other=/p/o.pt2:runners=4,device=cpu
//   pt2serve --model-repository ./models --repository-mode poll   # every model in it
//
// Flags override the config file. SIGTERM/SIGINT: health turns NOT_SERVING at
// once while requests are still served for drain_delay_ms (a second signal
// cuts that short), then stop accepting, drain in-flight requests
// (drain_timeout_ms), unload models, exit 0. A signal that arrives while that
// shutdown is under way exits at once with status 1, without draining.
#include <CLI/CLI.hpp>
#include <absl/synchronization/mutex.h>
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "config/server_config.h"
#include "runtime/extraction_dirs.h"
#include "server/logging.h"
#include "server/server.h"
#include "server/version.h"

using namespace pt2serve;

namespace {

// Parses "NAME=PATH[:key=value,key=value]" with keys runners, device, queue,
// timeout_ms, cpu_threads, version.
StatusOr<ModelEntry> ParseModelFlag(const std::string& flag) {
  const auto eq = flag.find('=');
  if (eq == std::string::npos || eq == 0) {
    return InvalidArgument("--model '" + flag + "': expected NAME=PATH[:key=value,...]");
  }
  ModelEntry entry;
  entry.name = flag.substr(0, eq);
  std::string rest = flag.substr(eq + 1);
  const auto colon = rest.find(":");
  entry.path = rest.substr(0, colon);
  if (colon == std::string::npos) return entry;
  std::stringstream options(rest.substr(colon + 1));
  for (std::string kv; std::getline(options, kv, ',');) {
    const auto e = kv.find('=');
    const std::string key = kv.substr(0, e);
    const std::string value = e == std::string::npos ? "" : kv.substr(e + 1);
    try {
      if (key == "runners") entry.num_runners = std::stoi(value);
      else if (key == "queue") entry.max_queue_size = std::stoi(value);
      else if (key == "timeout_ms") entry.timeout_ms = std::stoi(value);
      else if (key == "cpu_threads") entry.cpu_threads = std::stoi(value);
      else if (key == "device") entry.device = value;
      else if (key == "isolation") entry.isolation = value;
      else if (key == "version") entry.weights_version = value;
      else if (key == "batch") {
        if (!entry.dynamic_batching) entry.dynamic_batching.emplace();
        entry.dynamic_batching->max_batch_size = std::stoll(value);
      } else if (key == "batch_delay_us") {
        if (!entry.dynamic_batching) entry.dynamic_batching.emplace();
        entry.dynamic_batching->max_queue_delay_us = std::stoll(value);
      }
      else return InvalidArgument("--model '" + flag + "': unknown option '" + key + "'");
    } catch (const std::exception&) {
      return InvalidArgument("--model '" + flag + "': bad value for '" + key + "'");
    }
  }
  return entry;
}

// Parses "NAME=FILE[:version=V,sha256=H]" onto the config's model NAME
// (ModelEntry::weights_file). An empty FILE (and version) means "the package's
// own weights", so a Kubernetes pod can always pass the flag with values from
// a ConfigMap that may not name a version yet.
Status ApplyInitialWeightsFlag(const std::string& flag, ServerConfig* config) {
  const auto eq = flag.find('=');
  if (eq == std::string::npos || eq == 0) {
    return InvalidArgument("--initial-weights '" + flag +
                           "': expected NAME=FILE[:version=V,sha256=H]");
  }
  const std::string name = flag.substr(0, eq);
  const std::string rest = flag.substr(eq + 1);
  const auto colon = rest.find(':');
  const std::string file = rest.substr(0, colon);
  std::string version, sha256;
  if (colon != std::string::npos) {
    std::stringstream options(rest.substr(colon + 1));
    for (std::string kv; std::getline(options, kv, ',');) {
      const auto e = kv.find('=');
      const std::string key = kv.substr(0, e);
      const std::string value = e == std::string::npos ? "" : kv.substr(e + 1);
      if (key == "version") version = value;
      else if (key == "sha256") sha256 = value;
      else return InvalidArgument("--initial-weights '" + flag + "': unknown option '" + key + "'");
    }
  }
  if (file.empty()) {
    if (!version.empty()) {
      return InvalidArgument("--initial-weights '" + flag + "': version '" + version +
                             "' given without a file");
    }
    return Status::Ok();
  }
  if (version.empty()) {
    return InvalidArgument("--initial-weights '" + flag + "': FILE needs :version=V");
  }
  for (ModelEntry& entry : config->models) {
    if (entry.name != name) continue;
    entry.weights_file = file;
    entry.weights_version = version;
    entry.weights_sha256 = sha256;
    return Status::Ok();
  }
  return InvalidArgument("--initial-weights '" + flag + "': no model named '" + name +
                         "' in the config");
}

int Fail(const Status& status) {
  std::fprintf(stderr, "pt2serve: %s\n", status.ToString().c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Debian's abseil is built without NDEBUG, so it checks every gRPC mutex
  // acquisition for lock-order cycles (a debugging aid, off in NDEBUG builds):
  // a global graph under its own lock. Off, the quiet 2-core VM serves ~15%
  // more requests at 4 streams (docs/benchmarks.md).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{"pt2serve: inference server for PyTorch AOTInductor packages"};
  std::string config_path;
  std::vector<std::string> model_flags;
  std::optional<std::string> inference_address, admin_address, metrics_address, repository,
      log_level, log_format, token_file, token_env, repository_mode, shared_memory;
  std::optional<int> repository_poll_ms, drain_ms, drain_delay_ms, max_connection_age_ms,
      max_connection_age_grace_ms;
  std::vector<std::string> initial_weights;
  bool access_log = false;
  app.add_option("-c,--config", config_path, "YAML config file (see config/)");
  app.add_option("-m,--model", model_flags,
                 "Serve a model: NAME=PATH[:runners=N,device=D,queue=N,timeout_ms=N,cpu_threads=N,isolation=in_process|process,batch=N,batch_delay_us=N,"
                 "version=L] "
                 "(repeatable; adds to the config's models)");
  app.add_option("--inference-address", inference_address, "host:port for inference (KServe v2 + pt2serve.v1)");
  app.add_option("--admin-address", admin_address, "host:port or unix:PATH for the admin API; '' disables");
  app.add_option("--metrics-address", metrics_address, "host:port for Prometheus /metrics; '' disables");
  app.add_option("--model-repository", repository,
                 "Model repository: NAME/[VERSION/]model.pt2 folders (docs/model-repository.md); "
                 "the root for admin loads and server-side weight files");
  app.add_option("--repository-mode", repository_mode,
                 "explicit (only --model/config models; load others by name) | all (load every "
                 "repository model at start) | poll (and rescan)");
  app.add_option("--repository-poll-ms", repository_poll_ms,
                 "With --repository-mode poll: rescan interval (default 5000)");
  app.add_option("--admin-token-file", token_file, "File holding the admin bearer token");
  app.add_option("--admin-token-env", token_env, "Environment variable holding the admin bearer token");
  app.add_option("--drain-timeout-ms", drain_ms, "How long shutdown waits for in-flight requests");
  app.add_option("--drain-delay-ms", drain_delay_ms,
                 "After SIGTERM: report NOT_SERVING but keep serving this long before closing");
  app.add_option("--max-connection-age-ms", max_connection_age_ms,
                 "Send GOAWAY to inference connections older than this (0 = never)");
  app.add_option("--max-connection-age-grace-ms", max_connection_age_grace_ms,
                 "Time an aged connection gets for its in-flight RPCs");
  app.add_option("--initial-weights", initial_weights,
                 "NAME=FILE[:version=V,sha256=H]: serve these weights from the start "
                 "(an empty FILE keeps the package's; repeatable)");
  app.add_option("--shared-memory", shared_memory,
                 "none | system: KServe system shared memory for local, trusted clients "
                 "(docs/shared-memory.md; default none)");
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|critical|off");
  app.add_option("--log-format", log_format, "text|json");
  app.add_flag("--access-log", access_log, "Log one line per request");
  app.set_version_flag("--version", std::string(server::kVersion));
  CLI11_PARSE(app, argc, argv);

  ServerConfig config;
  if (!config_path.empty()) {
    auto loaded = LoadServerConfigFile(config_path);
    if (!loaded.ok()) return Fail(loaded.status());
    config = std::move(loaded).value();
  }
  if (inference_address) config.inference_address = *inference_address;
  if (admin_address) config.admin_address = *admin_address;
  if (metrics_address) config.metrics_address = *metrics_address;
  if (repository) config.model_repository = *repository;
  if (repository_mode) config.repository_mode = *repository_mode;
  if (repository_poll_ms) config.repository_poll_interval_ms = *repository_poll_ms;
  if (token_file) config.admin_token_file = *token_file;
  if (token_env) config.admin_token_env = *token_env;
  if (drain_ms) config.drain_timeout_ms = *drain_ms;
  if (drain_delay_ms) config.drain_delay_ms = *drain_delay_ms;
  if (max_connection_age_ms) config.max_connection_age_ms = *max_connection_age_ms;
  if (max_connection_age_grace_ms) {
    config.max_connection_age_grace_ms = *max_connection_age_grace_ms;
  }
  if (shared_memory) config.shared_memory = *shared_memory;
  if (log_level) config.log_level = *log_level;
  if (log_format) config.log_format = *log_format;
  if (access_log) config.access_log = true;
  for (const auto& flag : model_flags) {
    auto entry = ParseModelFlag(flag);
    if (!entry.ok()) return Fail(entry.status());
    config.models.push_back(std::move(entry).value());
  }
  if (config_path.empty() && config.models.empty() && config.repository_mode == "explicit") {
    // No arguments: the bundled demo model (exported by scripts/setup.sh).
    ModelEntry demo;
    demo.name = "mlp";
    demo.path = PT2SERVE_DEMO_MODEL;
    config.models.push_back(demo);
  }
  for (const auto& flag : initial_weights) {
    if (Status applied = ApplyInitialWeightsFlag(flag, &config); !applied.ok()) {
      return Fail(applied);
    }
  }
  if (Status valid = ValidateServerConfig(config); !valid.ok()) return Fail(valid);
  if (Status logs = server::ConfigureLogging(config.log_level, config.log_format); !logs.ok()) {
    return Fail(logs);
  }

  // Block the shutdown signals in every thread; main waits for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // Package extraction directories of pt2serve processes that died without
  // removing them (see runtime/extraction_dirs.h).
  if (const size_t stale = RemoveStaleExtractionDirs()) {
    server::Logger("server")->info(
        "removed {} package extraction directories under {} left by exited pt2serve processes",
        stale, kExtractionRoot);
  }

  // Test-only fault injection (server/fault_injection.h), read once.
  server::FaultInjection faults;
  if (const char* spec = std::getenv(server::kFaultInjectEnv)) {
    auto parsed = server::FaultInjection::Parse(spec);
    if (!parsed.ok()) return Fail(parsed.status());
    faults = std::move(parsed).value();
  }
  auto server = server::Server::Start(config, std::move(faults));
  if (!server.ok()) return Fail(server.status());
  int signal = 0;
  sigwait(&signals, &signal);
  server::Logger("server")->info("received {}", signal == SIGTERM ? "SIGTERM" : "SIGINT");
  if (config.drain_delay_ms > 0) {
    (*server)->BeginDrain();
    const timespec delay{config.drain_delay_ms / 1000, (config.drain_delay_ms % 1000) * 1'000'000L};
    if (sigtimedwait(&signals, nullptr, &delay) > 0) {
      server::Logger("server")->info("second signal: ending the drain delay early");
    }
  }
  // From here on one more signal means "now": the drain may be waiting on
  // clients that never finish. The thread blocks in sigwait until then; it is
  // detached, so a normal exit does not wait for it.
  std::thread([signals] {
    int again = 0;
    sigwait(&signals, &again);
    server::Logger("server")->warn("received {} during shutdown: exiting now without draining",
                                   again == SIGTERM ? "SIGTERM" : "SIGINT");
    server::Logger("server")->flush();
    std::_Exit(1);
  }).detach();
  (*server)->Shutdown();
  server->reset();
  return 0;
}
