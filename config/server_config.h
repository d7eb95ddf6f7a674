// ServerConfig: the daemon's YAML configuration file, parsed and validated.
//
// Depends only on common/ and yaml-cpp: plain strings and ints that the daemon
// maps onto runtime/server types. The schema is documented, key by key, in
// config/pt2serve.example.yaml. Every error is INVALID_ARGUMENT naming the
// origin (file), the key path (e.g. "models[1].num_runners") and the problem;
// unknown keys are errors, so a typo never falls back to a default silently.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace pt2serve {

struct TlsConfig {
  std::string cert_file;       // PEM server certificate chain
  std::string key_file;        // PEM private key; required with cert_file
  std::string client_ca_file;  // set: clients must present a cert it signed
  bool enabled() const { return !cert_file.empty(); }
};

// `dynamic_batching:` of a model entry (see docs/batching.md); ranges are
// checked when the model loads, against its package.
struct BatchingEntry {
  int64_t max_batch_size = 0;       // rows per batch; 0 = the package's limit
  int64_t max_queue_delay_us = 0;   // how long a request may wait for a batch to fill
  std::vector<int64_t> preferred_batch_sizes{};
  bool preserve_ordering = false;
  int priority_levels = 0;          // 0 = no priorities
  int default_priority_level = 0;   // 0 = the middle level
  std::vector<int64_t> priority_queue_sizes{};  // per level; empty = max_queue_size
};

struct ModelEntry {
  std::string name;                   // [A-Za-z0-9_.-]+, unique
  std::string path;                   // the .pt2 package
  std::string device = "auto";        // auto | cpu | mps | cuda[:N] | xpu[:N]
  int num_runners = 1;                // 1..64, per device
  int max_queue_size = 64;            // >= 0
  int timeout_ms = 0;                 // default request deadline; 0 = none
  int cpu_threads = 0;                // intra-op threads per runner; 0 = process default
  std::string isolation = "in_process";  // in_process | process (see docs/containment.md)
  // Label of the weights served. With weights_file, the label of that file's
  // weights (then not "initial").
  std::string weights_version = "initial";
  // A .safetensors file staged and swapped in before the model reports READY
  // on the health service ("" = the package's compiled-in weights). How a pod
  // that restarts or scales out starts on the fleet's rolled-out version.
  std::string weights_file{};
  std::string weights_sha256{};  // optional hex SHA-256 of weights_file's bytes
  // Declared inputs/outputs (keys `inputs`, `outputs`, `max_batch_size`),
  // checked against the package at load; unset = the package's own.
  std::optional<Signature> signature = std::nullopt;
  // Set (possibly to all defaults) = dynamic batching on.
  std::optional<BatchingEntry> dynamic_batching = std::nullopt;
  // Most memory one weight push may hold on top of the served weights (its
  // upload buffers + the inactive constant buffer); more is refused with
  // RESOURCE_EXHAUSTED at the push's header. >= 0; 0 = no per-model limit.
  int64_t weights_staging_budget_bytes = 0;
};

// Which versions of a repository model are served (a model's config.yaml
// key `version_policy`): the `latest` N, every version, or the `specific`
// ones listed.
struct VersionPolicy {
  enum class Kind { kLatest, kAll, kSpecific };
  Kind kind = Kind::kLatest;
  int latest = 1;                 // >= 1, with kLatest
  std::vector<int64_t> specific;  // >= 1 each, with kSpecific
};

// A model folder's optional config.yaml in the model repository: the keys of
// a `models` entry except `path` (the repository decides it; `name`, when
// given, must be the folder's name) and weights_file / weights_sha256, plus
// `version_policy`.
struct RepositoryModelConfig {
  ModelEntry entry;
  VersionPolicy version_policy;
};

// How the model repository is used (key server.repository_mode).
// explicit: only the `models` list loads at start; admin / KServe loads by
// name. all: every model in the repository also loads at start. poll: like
// all, then the repository is rescanned every repository_poll_interval_ms.
inline constexpr std::string_view kRepositoryModes[] = {"explicit", "all", "poll"};

// Values of server.shared_memory.
inline constexpr std::string_view kSharedMemoryModes[] = {"none", "system"};

// Upper bound of ServerConfig::drain_delay_ms (10 minutes).
inline constexpr int kMaxDrainDelayMs = 600'000;
// Upper bound of ServerConfig::upload_idle_timeout_ms (1 hour).
inline constexpr int kMaxUploadIdleTimeoutMs = 3'600'000;

struct ServerConfig {
  std::string inference_address = "127.0.0.1:8001";
  // "" disables the admin listener; "unix:/path" is allowed.
  std::string admin_address = "127.0.0.1:8003";
  // "" disables /metrics; host:port only (served over HTTP).
  std::string metrics_address = "127.0.0.1:8002";
  // Root that admin LoadModel paths and server-side weight paths are confined
  // to; "" disables admin loads.
  std::string model_repository;
  std::string repository_mode = "explicit";  // kRepositoryModes; all/poll need model_repository
  int repository_poll_interval_ms = 5000;     // with poll: 100..86400000
  int64_t max_message_bytes = 64 << 20;  // 1..INT32_MAX (gRPC takes an int)
  // On SIGTERM: health turns NOT_SERVING at once, but requests are still
  // served for this long (0..kMaxDrainDelayMs), so load balancers and
  // Kubernetes endpoints stop sending before connections close.
  int drain_delay_ms = 0;
  int drain_timeout_ms = 30000;          // >= 0; then in-flight requests may finish
  // gRPC GOAWAY after a connection's age (0 = unlimited), so clients reconnect
  // and rebalance after scale-out; the grace lets in-flight RPCs finish.
  int max_connection_age_ms = 0;
  int max_connection_age_grace_ms = 30000;
  // A weight upload (UpdateConstantBuffer stream) that receives no message
  // for this long is aborted and releases the model's weight operations
  // (1..kMaxUploadIdleTimeoutMs; there is no "never").
  int upload_idle_timeout_ms = 30000;
  // Sum over all models of the memory weight pushes hold on top of the
  // served weights (upload buffers + allocated inactive constant buffers); a
  // push that would exceed it is refused with RESOURCE_EXHAUSTED at its
  // header. >= 0; 0 = no server-wide limit.
  int64_t weights_staging_budget_bytes = 0;
  // Serve KServe RepositoryModelLoad/Unload on the inference port too.
  bool allow_repository_admin_on_inference_port = false;
  // Accept gzip/deflate-compressed request messages on the inference port.
  // Off by default: gRPC inflates a message before checking its size, so a
  // small compressed request can allocate far beyond max_message_bytes.
  bool allow_compressed_requests = false;
  // KServe system shared memory (docs/shared-memory.md): "none" or "system".
  // With "system", any client of the inference port can make the server read
  // and write POSIX shared-memory objects of its host (/dev/shm) that the
  // server's user may open: only for trusted local clients.
  std::string shared_memory = "none";
  // Bearer token for the admin listener; see ResolveAdminToken().
  std::string admin_token_file;
  std::string admin_token_env;
  TlsConfig inference_tls, admin_tls;
  std::string log_level = "info";   // trace debug info warn error critical off
  std::string log_format = "text";  // text | json
  bool access_log = false;
  std::vector<ModelEntry> models;
};

// Parses and validates `yaml_text`. `origin` names the source in messages.
// Non-empty `base_dir`: relative model paths, model_repository, token and TLS
// files are resolved against it (LoadServerConfigFile passes the file's
// directory); empty: they are left as written. An empty document gives the
// defaults.
StatusOr<ServerConfig> ParseServerConfig(std::string_view yaml_text,
                                         std::string_view origin,
                                         std::string_view base_dir = {});

// Reads and parses `path`; relative paths inside resolve against its
// (absolute) directory. NOT_FOUND if the file does not exist.
StatusOr<ServerConfig> LoadServerConfigFile(const std::string& path);

// Parses a model folder's config.yaml for model `name` (the folder's name).
// Errors are INVALID_ARGUMENT naming `origin` and the key.
StatusOr<RepositoryModelConfig> ParseRepositoryModelConfig(std::string_view yaml_text,
                                                           std::string_view origin,
                                                           std::string_view name);

// Checks values and cross-field rules (addresses, ranges, names, TLS pairs).
// Both parse paths call it; the daemon calls it again after CLI overrides.
// Messages name the key path but not the file.
Status ValidateServerConfig(const ServerConfig& config);

// The admin bearer token: the variable named by admin_token_env if it is set
// and non-empty, else the contents of admin_token_file, whitespace-trimmed.
// "" when neither is configured. Errors (fail closed): NOT_FOUND for a
// missing file, PERMISSION_DENIED for an unreadable one, FAILED_PRECONDITION
// when the configured source yields an empty token or one with characters
// that cannot travel in a gRPC header (non-printable ASCII).
StatusOr<std::string> ResolveAdminToken(const ServerConfig& config);

}  // namespace pt2serve
