// ModelRegistry: the set of served models, by name, with their lifecycle.
//
// States: LOADING -> READY -> UNLOADING -> (removed); LOADING -> FAILED (with
// a reason, kept until the next load of that name or an unload). A READY
// model whose worker process died reports RESTARTING (requests wait for it)
// and READY again once its worker is back; one that cannot serve any more
// (a poisoned in-process device context, a worker that fails to restart)
// reports FAILED with the reason and refuses requests. Those two are read
// from the model (Model::availability), not stored. A request
// holds a ModelHandle for its whole duration; Unload() waits until every
// handle to the model is gone, so a model is never destroyed under a request.
// A failed load never affects other models.
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

namespace pt2serve {

// kUnloaded is only reported to observers: the entry is gone by then.
enum class ModelState { kLoading, kReady, kUnloading, kFailed, kUnloaded, kRestarting };
std::string_view ModelStateName(ModelState state);  // "LOADING", "READY", ...

struct ModelStatus {
  std::string name;
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

 private:
  friend class ModelRegistry;
  struct Entry;
  ModelHandle(std::shared_ptr<Entry> entry, std::shared_ptr<Model> model)
      : entry_(std::move(entry)), model_(std::move(model)) {}
  void Reset();
  std::shared_ptr<Entry> entry_;
  std::shared_ptr<Model> model_;
};

class ModelRegistry {
 public:
  // Called after every state change, outside the registry's locks.
  using Observer = std::function<void(const ModelStatus&)>;

  ModelRegistry() = default;
  // Unloads everything still loaded.
  ~ModelRegistry();

  void AddObserver(Observer observer);

  // Loads a model (blocking) and makes it READY. ALREADY_EXISTS when a model
  // of that name is loading or loaded; a FAILED one is replaced. On failure
  // the model stays listed as FAILED with the reason, and that Status is
  // returned.
  Status Load(const ModelConfig& config);

  // Stops new requests to the model, waits up to `drain_timeout` for the
  // requests holding handles, then destroys it. NOT_FOUND when unknown.
  // DEADLINE_EXCEEDED if requests are still in flight after the timeout (the
  // model then stays READY).
  Status Unload(const std::string& name,
                std::chrono::milliseconds drain_timeout = std::chrono::seconds(30));
  void UnloadAll(std::chrono::milliseconds drain_timeout = std::chrono::seconds(30));

  // A handle to a READY (or RESTARTING) model: NOT_FOUND when unknown,
  // UNAVAILABLE while it is loading, unloading or failed (the message says
  // which).
  StatusOr<ModelHandle> Get(const std::string& name) const;

  StatusOr<ModelStatus> GetStatus(const std::string& name) const;
  // Whether a model of that name is listed (in any state); no copies.
  bool Contains(const std::string& name) const;
  std::vector<ModelStatus> List() const;  // sorted by name
  // True when every model is READY (and there is at least one).
  bool AllReady() const;

 private:
  using Entry = ModelHandle::Entry;
  void Notify(const ModelStatus& status);
  std::shared_ptr<Entry> Find(const std::string& name) const;
  // The entry's status with the model's availability folded in.
  // REQUIRES: entry.mu held.
  static ModelStatus SnapshotLocked(const Entry& entry);

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> entries_;  // guarded by mu_
  std::mutex observers_mu_;
  std::vector<Observer> observers_;  // guarded by observers_mu_
};

}  // namespace pt2serve
