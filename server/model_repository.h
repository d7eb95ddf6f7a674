// ModelRepository: the model repository folder (Triton / TF Serving layout)
// and the loads and unloads requested against it (admin RPCs, the KServe
// repository extension, the poller of repository_mode: poll).
//
// Layout under the root, one entry per model NAME ([A-Za-z0-9_.-]+):
//   NAME.pt2                  version 1
//   NAME/model.pt2            version 1
//   NAME/<N>/model.pt2        version N (N >= 1; several may exist)
//   NAME/config.yaml          optional: the keys of a `models` entry (no
//                             path) plus version_policy (default latest: 1)
//
// Confinement: nothing outside the root is opened on a request's behalf.
// Paths are relative, free of NUL bytes and ".." escapes, and are resolved
// through symlinks: a link inside the repository that points inside it is
// followed, one that leads outside is refused (PERMISSION_DENIED), for
// packages and server-side weight files alike.
//
// Thread-safety: all methods may be called concurrently. Repository loads
// and unloads (by name, Sync) are serialized by one mutex, so the poller and
// RPCs never load the same model twice.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "config/server_config.h"
#include "runtime/model_registry.h"

namespace pt2serve::server {

// One model folder (or NAME.pt2 file) found in the repository.
struct RepositoryModel {
  std::string name;
  std::map<int64_t, std::string> versions;  // version -> resolved package path
  std::map<int64_t, std::string> refused;   // version -> why its path was refused
  RepositoryModelConfig config;             // config.yaml, or the defaults
  std::string problem;  // why it cannot be loaded (bad config.yaml, ...); "" = fine
  // The versions version_policy selects (a subset of `versions`).
  std::vector<int64_t> Selected() const;
};

// One row of the repository index: a model version and its state.
struct IndexEntry {
  std::string name;
  int64_t version = 1;
  std::string state;  // READY, LOADING, UNLOADING or UNAVAILABLE (KServe's names)
  std::string reason;
};

struct RepositoryOptions {
  std::string root;  // "" = no repository: loads by name or path are refused
  // "explicit", "all" or "poll" (config/server_config.h).
  std::string mode = "explicit";
  // Names of the configured `models`: they win over repository folders of
  // the same name, which are then neither loaded nor unloaded from here.
  std::set<std::string> configured;
  // Options for loads by path that the request leaves unset.
  ModelConfig defaults;
  std::chrono::milliseconds drain_timeout{30000};
};

class ModelRepository {
 public:
  // `registry` must outlive this object.
  ModelRepository(ModelRegistry& registry, RepositoryOptions options);
  // Stops the poller.
  ~ModelRepository();

  // Resolves `relative` under the root and returns the path to open:
  // FAILED_PRECONDITION when no root is configured, INVALID_ARGUMENT when it
  // is empty, absolute, has a NUL byte or leaves the root through "..",
  // NOT_FOUND when missing, PERMISSION_DENIED when it resolves (through a
  // symlink) outside the root.
  StatusOr<std::string> Resolve(const std::string& relative) const;

  // Every model in the repository, by name (configured names excluded).
  // FAILED_PRECONDITION without a root.
  StatusOr<std::vector<RepositoryModel>> Scan() const;

  // Loads `config` as version 1 after resolving config.path under the root;
  // an empty path loads the model by name (LoadByName, with `config`'s
  // options ignored). A failed load leaves no entry: the error is returned.
  Status Load(ModelConfig config);
  // Loads the versions of repository model `name` that its version policy
  // selects (and unloads loaded versions it no longer selects, once the new
  // ones are READY). NOT_FOUND when the repository has no such model.
  Status LoadByName(const std::string& name);
  // Unloads every version. FAILED_PRECONDITION in poll mode for repository
  // models (the folder decides what is served there).
  Status Unload(const std::string& name);

  // Brings the registry in line with the repository: loads selected
  // versions not loaded yet, then unloads versions (and models) that are no
  // longer in it, draining their requests. A version that failed to load is
  // retried only after its files change. Used by modes all and poll.
  void Sync();
  // Starts a thread that runs Sync() every `interval`. Call once.
  void StartPolling(std::chrono::milliseconds interval);
  void StopPolling();

  // The repository's models and versions with their states, merged with the
  // registry's (models loaded from elsewhere are listed too), by name then
  // version. Versions not loaded are UNAVAILABLE with the reason.
  std::vector<IndexEntry> Index() const;

  const std::string& root() const { return options_.root; }
  const ModelConfig& defaults() const { return options_.defaults; }

 private:
  // Why a version is not served, by (name, version).
  struct Failure {
    std::string stamp;  // the files' identity when it failed (see Stamp())
    std::string reason;
  };
  using Key = std::pair<std::string, int64_t>;

  StatusOr<RepositoryModel> ScanOne(const std::string& name) const;
  // Loads and unloads so that `model` serves exactly its selected versions.
  // REQUIRES: ops_mu_ held.
  Status ApplyLocked(const RepositoryModel& model, bool retry_failed);
  // Unloads every version of `name`. REQUIRES: ops_mu_ held.
  Status UnloadLocked(const std::string& name);
  // Size and modification times of a version's package and config.yaml.
  static std::string Stamp(const RepositoryModel& model, int64_t version);

  ModelRegistry& registry_;
  const RepositoryOptions options_;

  // Serializes repository loads and unloads (held for their whole length).
  std::mutex ops_mu_;
  // Guards the two maps below; never held while loading.
  mutable std::mutex state_mu_;
  std::map<Key, Failure> failures_;
  std::set<std::string> managed_;  // names this repository loaded

  std::mutex poll_mu_;
  std::condition_variable poll_wake_;
  bool stop_polling_ = false;  // guarded by poll_mu_
  std::thread poller_;
};

}  // namespace pt2serve::server
