// ModelRegistry: the set of served models, by name, with their lifecycle.
//
// States: LOADING -> READY -> UNLOADING -> (removed); LOADING -> FAILED (with
// a reason, kept until the next load of that name or an unload; or removed at
// once, for loads with LoadOptions::keep_failed false). A READY
// model whose worker process died reports RESTARTING (requests wait for it)
// and READY again once its worker is back; one that cannot serve any more
// (a poisoned in-process device context, a worker that fails to restart)
// reports FAILED with the reason and refuses requests. Those two are read
// from the model (Model::availability), not stored. A request
// holds a ModelHandle for its whole duration; Unload() waits until every
// handle to the model is gone, so a model is never destroyed under a request.
// A failed load never affects other models.
//
// Versions: a name may have several numbered versions loaded at once (a
// model repository loads a new version next to the old one). Requests that
// name no version go to the serving version: the highest version that is
// READY (or RESTARTING), so traffic moves to a new version the moment it is
// READY. Per-name views (List, GetStatus, AllReady, metrics, health) report
// that serving version; ListVersions reports every one.
//
// Thread-safety: all methods may be called concurrently. Load and Unload of
// the same name are serialized (a second one gets FAILED_PRECONDITION while
// the first is in progress).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/model.h"
#include "runtime/staging_budget.h"

namespace pt2serve {

// kUnloaded is only reported to observers: the entry is gone by then.
enum class ModelState { kLoading, kReady, kUnloading, kFailed, kUnloaded, kRestarting };
std::string_view ModelStateName(ModelState state);  // "LOADING", "READY", ...

// A request or load that names no version; versions themselves are >= 1.
inline constexpr int64_t kServingVersion = 0;

struct ModelStatus {
  std::string name;
  int64_t version = 1;
  ModelState state = ModelState::kLoading;
  std::string reason;  // why it FAILED (empty otherwise)
  ModelConfig config;
  std::chrono::system_clock::time_point since;  // when it entered `state`
  std::chrono::nanoseconds load_duration{0};    // for READY/FAILED
  // Worker restarts of a process-isolated model so far.
  uint64_t restarts = 0;
  // Set in notifications of a loaded model's own availability changes
  // (RESTARTING, READY again, FAILED at run time) rather than a load or an
  // unload.
  bool availability_change = false;
};

class ModelRegistry;

// Keeps a READY model alive and counted as in use. Move-only.
class ModelHandle {
 public:
  ModelHandle() = default;
  ModelHandle(ModelHandle&& other) noexcept = default;
  ModelHandle& operator=(ModelHandle&& other) noexcept;
  ~ModelHandle();

  Model* operator->() const { return model_.get(); }
  Model& operator*() const { return *model_; }
  explicit operator bool() const { return model_ != nullptr; }
  // The version this handle serves. REQUIRES: a non-empty handle.
  int64_t version() const;

 private:
  friend class ModelRegistry;
  struct Entry;
  ModelHandle(std::shared_ptr<Entry> entry, std::shared_ptr<Model> model)
      : entry_(std::move(entry)), model_(std::move(model)) {}
  void Reset();
  std::shared_ptr<Entry> entry_;
  std::shared_ptr<Model> model_;
};

struct LoadOptions {
  int64_t version = 1;  // >= 1
  // What a failed load leaves behind. true: a FAILED entry with the reason
  // (models the operator configured: the server is not ready until they are
  // fixed). false: nothing (loads requested at run time, like Triton's
  // explicit loads: the caller gets the error, readiness is unaffected).
  bool keep_failed = true;
};

class ModelRegistry {
 public:
  // Called after every state change, outside the registry's locks.
  using Observer = std::function<void(const ModelStatus&)>;

  // `staging_budget`: the server-wide weight staging budget every loaded
  // model's pushes draw from (null: none).
  explicit ModelRegistry(std::shared_ptr<StagingBudget> staging_budget = nullptr)
      : staging_budget_(std::move(staging_budget)) {}
  // Unloads everything still loaded.
  ~ModelRegistry();

  void AddObserver(Observer observer);

  // Called with every model right after it loaded, before it turns READY
  // (before any request or weight operation can reach it). The daemon uses
  // it to install test-only fault injection (server/fault_injection.h).
  // Not thread-safe: set before the first Load.
  using LoadedHook = std::function<void(Model&)>;
  void SetLoadedHook(LoadedHook hook) { loaded_hook_ = std::move(hook); }
  // The server-wide staging budget given at construction (null: none).
  const StagingBudget* staging_budget() const { return staging_budget_.get(); }

  // Loads version `options.version` of a model (blocking) and makes it
  // READY. ALREADY_EXISTS when that version is loading or loaded; a FAILED
  // one is replaced. On failure the Status is returned and, with
  // keep_failed, the version stays listed as FAILED with the reason.
  Status Load(const ModelConfig& config, LoadOptions options = {});

  // Stops new requests to the model (every version, or only `version`),
  // waits up to `drain_timeout` for the requests holding handles, then
  // destroys it. NOT_FOUND when unknown. DEADLINE_EXCEEDED if requests are
  // still in flight after the timeout (that version then stays READY).
  Status Unload(const std::string& name,
                std::chrono::milliseconds drain_timeout = std::chrono::seconds(30),
                int64_t version = kServingVersion);
  void UnloadAll(std::chrono::milliseconds drain_timeout = std::chrono::seconds(30));

  // A handle to a READY (or RESTARTING) model version (kServingVersion: the
  // serving version): NOT_FOUND when the name or version is unknown,
  // UNAVAILABLE while it is loading, unloading or failed (the message says
  // which).
  StatusOr<ModelHandle> Get(const std::string& name, int64_t version = kServingVersion) const;

  StatusOr<ModelStatus> GetStatus(const std::string& name,
                                  int64_t version = kServingVersion) const;
  // Whether a model of that name is listed (any version, any state); no copies.
  bool Contains(const std::string& name) const;
  // One status per name (its serving version, else its highest), by name.
  std::vector<ModelStatus> List() const;
  // Every version of every model, by name then version.
  std::vector<ModelStatus> ListVersions() const;
  // True when every listed name has a READY serving version (and there is at
  // least one name).
  bool AllReady() const;

 private:
  using Entry = ModelHandle::Entry;
  using Versions = std::map<int64_t, std::shared_ptr<Entry>>;
  void Notify(const ModelStatus& status);
  // `version` of `name`, or (kServingVersion) the serving version: the
  // highest READY/RESTARTING one, else the highest. nullptr when unknown.
  std::shared_ptr<Entry> Find(const std::string& name, int64_t version) const;
  // REQUIRES: mu_ held.
  static std::shared_ptr<Entry> PickServingLocked(const Versions& versions);
  // NOT_FOUND for `version` of `name`, naming the versions that are loaded.
  Status NotLoaded(const std::string& name, int64_t version) const;
  // Removes `entry` if it is still the one listed. REQUIRES: mu_ held.
  void EraseLocked(const std::string& name, int64_t version, const std::shared_ptr<Entry>& entry);
  Status UnloadVersion(const std::string& name, int64_t version,
                       std::chrono::milliseconds drain_timeout);
  // The entry's status with the model's availability folded in.
  // REQUIRES: entry.mu held.
  static ModelStatus SnapshotLocked(const Entry& entry);

  const std::shared_ptr<StagingBudget> staging_budget_;
  mutable std::mutex mu_;
  std::map<std::string, Versions> entries_;  // guarded by mu_; no empty Versions
  std::mutex observers_mu_;
  std::vector<Observer> observers_;  // guarded by observers_mu_
  LoadedHook loaded_hook_;           // set before any Load
};

}  // namespace pt2serve
