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

ModelRegistry::~ModelRegistry() {
  UnloadAll();
  // Models still held after the drain timeout must not call back into a
  // destroyed registry.
  std::lock_guard lock(mu_);
  for (const auto& [name, entry] : entries_) {
    std::lock_guard elock(entry->mu);
    if (entry->model) entry->model->SetAvailabilityListener(nullptr);
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

std::shared_ptr<ModelHandle::Entry> ModelRegistry::Find(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second;
}

Status ModelRegistry::Load(const ModelConfig& config) {
  if (config.name.empty()) return InvalidArgument("model name must not be empty");
  std::shared_ptr<Entry> entry;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(config.name);
    if (it != entries_.end()) {
      std::lock_guard elock(it->second->mu);
      if (it->second->busy || it->second->status.state != ModelState::kFailed) {
        return AlreadyExists("model '" + config.name + "' is already " +
                             std::string(ModelStateName(it->second->status.state)));
      }
    }
    entry = std::make_shared<Entry>();
    entry->busy = true;
    entry->status.name = config.name;
    entry->status.config = config;
    entry->status.state = ModelState::kLoading;
    entry->status.since = std::chrono::system_clock::now();
    entries_[config.name] = entry;
  }
  ModelStatus snapshot;
  {
    std::lock_guard elock(entry->mu);
    snapshot = entry->status;
  }
  Notify(snapshot);

  const auto start = std::chrono::steady_clock::now();
  auto loaded = Model::Load(config);
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
  Notify(snapshot);
  return loaded.ok() ? Status::Ok() : loaded.status();
}

Status ModelRegistry::Unload(const std::string& name, std::chrono::milliseconds drain_timeout) {
  auto entry = Find(name);
  if (!entry) return NotFound("model '" + name + "' is not loaded");
  ModelStatus snapshot;
  std::shared_ptr<Model> model;
  {
    std::unique_lock elock(entry->mu);
    if (entry->busy) {
      return FailedPrecondition("a load or unload of model '" + name +
                                "' is already in progress");
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
      return DeadlineExceeded("model '" + name + "' still has requests in flight after " +
                              std::to_string(drain_timeout.count()) + " ms; not unloaded");
    }
    model = std::move(entry->model);
  }
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(name);
    if (it != entries_.end() && it->second == entry) entries_.erase(it);
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

StatusOr<ModelHandle> ModelRegistry::Get(const std::string& name) const {
  auto entry = Find(name);
  if (!entry) return NotFound("model '" + name + "' is not loaded");
  std::lock_guard elock(entry->mu);
  const ModelStatus status = SnapshotLocked(*entry);
  if (status.state != ModelState::kReady && status.state != ModelState::kRestarting) {
    std::string msg = "model '" + name + "' is " + std::string(ModelStateName(status.state));
    if (!status.reason.empty()) msg += ": " + status.reason;
    return Unavailable(std::move(msg));
  }
  ++entry->active;
  return ModelHandle(entry, entry->model);
}

bool ModelRegistry::Contains(const std::string& name) const { return Find(name) != nullptr; }

StatusOr<ModelStatus> ModelRegistry::GetStatus(const std::string& name) const {
  auto entry = Find(name);
  if (!entry) return NotFound("model '" + name + "' is not loaded");
  std::lock_guard elock(entry->mu);
  return SnapshotLocked(*entry);
}

std::vector<ModelStatus> ModelRegistry::List() const {
  std::vector<std::shared_ptr<Entry>> entries;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, entry] : entries_) entries.push_back(entry);
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
