#include "runtime/model_registry.h"

namespace pt2serve {

// Per-name state. The entry's own mutex guards everything below it.
struct ModelHandle::Entry {
  std::mutex mu;
  std::condition_variable drained;  // active reached 0
  ModelStatus status;
  std::shared_ptr<Model> model;  // set while READY or UNLOADING
  int active = 0;                // live handles
  bool busy = false;             // a Load/Unload of this name is in progress
};

std::string_view ModelStateName(ModelState state) {
  switch (state) {
    case ModelState::kLoading: return "LOADING";
    case ModelState::kReady: return "READY";
    case ModelState::kUnloading: return "UNLOADING";
    case ModelState::kFailed: return "FAILED";
    case ModelState::kUnloaded: return "UNLOADED";
    case ModelState::kRestarting: return "RESTARTING";
  }
  return "UNKNOWN";
}

ModelHandle& ModelHandle::operator=(ModelHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    entry_ = std::move(other.entry_);
    model_ = std::move(other.model_);
  }
  return *this;
}

ModelHandle::~ModelHandle() { Reset(); }

void ModelHandle::Reset() {
  if (!entry_) return;
  model_.reset();
  {
    std::lock_guard lock(entry_->mu);
    if (--entry_->active == 0) entry_->drained.notify_all();
  }
  entry_.reset();
}

int64_t ModelHandle::version() const { return entry_->status.version; }

ModelRegistry::~ModelRegistry() {
  UnloadAll();
  // Models still held after the drain timeout must not call back into a
  // destroyed registry.
  std::lock_guard lock(mu_);
  for (const auto& [name, versions] : entries_) {
    for (const auto& [version, entry] : versions) {
      std::lock_guard elock(entry->mu);
      if (entry->model) entry->model->SetAvailabilityListener(nullptr);
    }
  }
}

ModelStatus ModelRegistry::SnapshotLocked(const Entry& entry) {
  ModelStatus status = entry.status;
  if (entry.model) status.restarts = entry.model->restarts();
  if (status.state == ModelState::kReady && entry.model) {
    switch (entry.model->availability()) {
      case Availability::kServing: break;
      case Availability::kRestarting:
        status.state = ModelState::kRestarting;
        status.reason = entry.model->availability_reason();
        break;
      case Availability::kFailed:
        status.state = ModelState::kFailed;
        status.reason = entry.model->availability_reason();
        break;
    }
  }
  return status;
}

void ModelRegistry::AddObserver(Observer observer) {
  std::lock_guard lock(observers_mu_);
  observers_.push_back(std::move(observer));
}

void ModelRegistry::Notify(const ModelStatus& status) {
  std::lock_guard lock(observers_mu_);
  for (const auto& observer : observers_) observer(status);
}

std::shared_ptr<ModelHandle::Entry> ModelRegistry::PickServingLocked(const Versions& versions) {
  for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
    std::lock_guard elock(it->second->mu);
    const ModelState state = SnapshotLocked(*it->second).state;
    if (state == ModelState::kReady || state == ModelState::kRestarting) return it->second;
  }
  return versions.empty() ? nullptr : versions.rbegin()->second;
}

std::shared_ptr<ModelHandle::Entry> ModelRegistry::Find(const std::string& name,
                                                        int64_t version) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return nullptr;
  if (version == kServingVersion) return PickServingLocked(it->second);
  auto v = it->second.find(version);
  return v == it->second.end() ? nullptr : v->second;
}

namespace {

std::string Describe(const std::string& name, int64_t version) {
  return version == kServingVersion
             ? "model '" + name + "'"
             : "model '" + name + "' version " + std::to_string(version);
}

}  // namespace

Status ModelRegistry::Load(const ModelConfig& config, LoadOptions options) {
  if (config.name.empty()) return InvalidArgument("model name must not be empty");
  if (options.version < 1) {
    return InvalidArgument("model version must be >= 1, got " + std::to_string(options.version));
  }
  const std::string what = Describe(config.name, options.version);
  std::shared_ptr<Entry> entry;
  {
    std::lock_guard lock(mu_);
    Versions& versions = entries_[config.name];
    auto it = versions.find(options.version);
    if (it != versions.end()) {
      std::lock_guard elock(it->second->mu);
      if (it->second->busy || it->second->status.state != ModelState::kFailed) {
        return AlreadyExists(what + " is already " +
                             std::string(ModelStateName(it->second->status.state)));
      }
    }
    entry = std::make_shared<Entry>();
    entry->busy = true;
    entry->status.name = config.name;
    entry->status.version = options.version;
    entry->status.config = config;
    entry->status.state = ModelState::kLoading;
    entry->status.since = std::chrono::system_clock::now();
    versions[options.version] = entry;
  }
  ModelStatus snapshot;
  {
    std::lock_guard elock(entry->mu);
    snapshot = entry->status;
  }
  Notify(snapshot);

  const auto start = std::chrono::steady_clock::now();
  auto loaded = Model::Load(config, staging_budget_);
  if (loaded.ok() && loaded_hook_) loaded_hook_(**loaded);
  const auto took = std::chrono::steady_clock::now() - start;
  {
    std::lock_guard elock(entry->mu);
    entry->busy = false;
    entry->status.since = std::chrono::system_clock::now();
    entry->status.load_duration = took;
    if (loaded.ok()) {
      entry->model = std::move(loaded).value();
      entry->status.state = ModelState::kReady;
      // Runs on the thread that saw the change (a worker's supervisor, a
      // request): report the state it now derives to the observers.
      std::weak_ptr<Entry> weak = entry;
      entry->model->SetAvailabilityListener([this, weak] {
        auto e = weak.lock();
        if (!e) return;
        ModelStatus now;
        {
          std::lock_guard lock(e->mu);
          if (e->status.state != ModelState::kReady) return;  // unloading reports itself
          now = SnapshotLocked(*e);
        }
        now.availability_change = true;
        Notify(now);
      });
    } else {
      entry->status.state = ModelState::kFailed;
      entry->status.reason = loaded.status().ToString();
    }
    snapshot = entry->status;
  }
  if (!loaded.ok() && !options.keep_failed) {
    std::lock_guard lock(mu_);
    EraseLocked(config.name, options.version, entry);
  }
  Notify(snapshot);
  return loaded.ok() ? Status::Ok() : loaded.status();
}

void ModelRegistry::EraseLocked(const std::string& name, int64_t version,
                                const std::shared_ptr<Entry>& entry) {
  auto it = entries_.find(name);
  if (it == entries_.end()) return;
  auto v = it->second.find(version);
  if (v != it->second.end() && v->second == entry) it->second.erase(v);
  if (it->second.empty()) entries_.erase(it);
}

Status ModelRegistry::Unload(const std::string& name, std::chrono::milliseconds drain_timeout,
                             int64_t version) {
  if (version != kServingVersion) return UnloadVersion(name, version, drain_timeout);
  std::vector<int64_t> versions;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) return NotFound("model '" + name + "' is not loaded");
    for (const auto& [v, entry] : it->second) versions.push_back(v);
  }
  Status first = Status::Ok();
  for (int64_t v : versions) {
    Status s = UnloadVersion(name, v, drain_timeout);
    // A version that went away meanwhile is not an error of this call.
    if (!s.ok() && s.code() != StatusCode::kNotFound && first.ok()) first = s;
  }
  return first;
}

Status ModelRegistry::UnloadVersion(const std::string& name, int64_t version,
                                    std::chrono::milliseconds drain_timeout) {
  auto entry = Find(name, version);
  if (!entry) return NotFound(Describe(name, version) + " is not loaded");
  ModelStatus snapshot;
  std::shared_ptr<Model> model;
  {
    std::unique_lock elock(entry->mu);
    if (entry->busy) {
      return FailedPrecondition("a load or unload of " + Describe(name, version) +
                                " is already in progress");
    }
    if (entry->status.state == ModelState::kReady) {
      entry->busy = true;
      entry->status.state = ModelState::kUnloading;
      entry->status.since = std::chrono::system_clock::now();
      snapshot = entry->status;
    }
  }
  if (snapshot.state == ModelState::kUnloading) {
    Notify(snapshot);
    std::unique_lock elock(entry->mu);
    if (!entry->drained.wait_for(elock, drain_timeout, [&] { return entry->active == 0; })) {
      entry->busy = false;
      entry->status.state = ModelState::kReady;
      entry->status.since = std::chrono::system_clock::now();
      snapshot = entry->status;
      elock.unlock();
      Notify(snapshot);
      return DeadlineExceeded(Describe(name, version) + " still has requests in flight after " +
                              std::to_string(drain_timeout.count()) + " ms; not unloaded");
    }
    model = std::move(entry->model);
  }
  {
    std::lock_guard lock(mu_);
    EraseLocked(name, version, entry);
  }
  model.reset();  // destroys the container: no handle can reach it any more
  {
    std::lock_guard elock(entry->mu);
    entry->busy = false;
    snapshot = entry->status;
  }
  snapshot.state = ModelState::kUnloaded;
  snapshot.since = std::chrono::system_clock::now();
  Notify(snapshot);
  return Status::Ok();
}

void ModelRegistry::UnloadAll(std::chrono::milliseconds drain_timeout) {
  std::vector<std::string> names;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, entry] : entries_) names.push_back(name);
  }
  for (const auto& name : names) (void)Unload(name, drain_timeout);
}

Status ModelRegistry::NotLoaded(const std::string& name, int64_t version) const {
  std::string loaded;
  {
    std::lock_guard lock(mu_);
    if (auto it = entries_.find(name); it != entries_.end()) {
      for (const auto& [v, entry] : it->second) {
        loaded += (loaded.empty() ? "" : ", ") + std::to_string(v);
      }
    }
  }
  if (version == kServingVersion || loaded.empty()) {
    return NotFound(Describe(name, version) + " is not loaded");
  }
  return NotFound("model '" + name + "' has no version '" + std::to_string(version) +
                  "' loaded (loaded: " + loaded + ")");
}

StatusOr<ModelHandle> ModelRegistry::Get(const std::string& name, int64_t version) const {
  auto entry = Find(name, version);
  if (!entry) return NotLoaded(name, version);
  std::lock_guard elock(entry->mu);
  const ModelStatus status = SnapshotLocked(*entry);
  if (status.state != ModelState::kReady && status.state != ModelState::kRestarting) {
    std::string msg = Describe(name, version) + " is " + std::string(ModelStateName(status.state));
    if (!status.reason.empty()) msg += ": " + status.reason;
    return Unavailable(std::move(msg));
  }
  ++entry->active;
  return ModelHandle(entry, entry->model);
}

bool ModelRegistry::Contains(const std::string& name) const {
  std::lock_guard lock(mu_);
  return entries_.contains(name);
}

StatusOr<ModelStatus> ModelRegistry::GetStatus(const std::string& name, int64_t version) const {
  auto entry = Find(name, version);
  if (!entry) return NotLoaded(name, version);
  std::lock_guard elock(entry->mu);
  return SnapshotLocked(*entry);
}

std::vector<ModelStatus> ModelRegistry::List() const {
  std::vector<std::shared_ptr<Entry>> entries;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, versions] : entries_) entries.push_back(PickServingLocked(versions));
  }
  std::vector<ModelStatus> out;
  for (const auto& entry : entries) {
    std::lock_guard elock(entry->mu);
    out.push_back(SnapshotLocked(*entry));
  }
  return out;
}

std::vector<ModelStatus> ModelRegistry::ListVersions() const {
  std::vector<std::shared_ptr<Entry>> entries;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, versions] : entries_) {
      for (const auto& [version, entry] : versions) entries.push_back(entry);
    }
  }
  std::vector<ModelStatus> out;
  for (const auto& entry : entries) {
    std::lock_guard elock(entry->mu);
    out.push_back(SnapshotLocked(*entry));
  }
  return out;
}

bool ModelRegistry::AllReady() const {
  auto all = List();
  if (all.empty()) return false;
  for (const auto& s : all) {
    if (s.state != ModelState::kReady) return false;
  }
  return true;
}

}  // namespace pt2serve
