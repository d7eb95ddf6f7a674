#include "server/model_repository.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "server/logging.h"
#include "server/server.h"

namespace pt2serve::server {

namespace fs = std::filesystem;

namespace {

constexpr char kPackage[] = "model.pt2";
constexpr char kModelConfig[] = "config.yaml";

bool ValidModelName(const std::string& name) {
  if (name.empty() || name[0] == '.') return false;  // also hides ".", "..", dotfiles
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
  });
}

// A version folder's name as a number >= 1, or 0 when it is not one.
int64_t ParseVersion(const std::string& text) {
  if (text.empty() || text.size() > 18 || text[0] == '0' ||
      !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return 0;
  }
  return std::stoll(text);
}

// `path` is `root` or lies below it (both canonical).
bool IsUnder(const fs::path& path, const fs::path& root) {
  auto [r, p] = std::mismatch(root.begin(), root.end(), path.begin(), path.end());
  return r == root.end();
}

std::string StateName(ModelState state) {
  switch (state) {
    case ModelState::kLoading: return "LOADING";
    case ModelState::kReady: return "READY";
    case ModelState::kUnloading: return "UNLOADING";
    default: return "UNAVAILABLE";
  }
}

}  // namespace

std::vector<int64_t> RepositoryModel::Selected() const {
  std::vector<int64_t> all;
  for (const auto& [version, path] : versions) all.push_back(version);
  const VersionPolicy& policy = config.version_policy;
  switch (policy.kind) {
    case VersionPolicy::Kind::kAll: return all;
    case VersionPolicy::Kind::kLatest: {
      const size_t keep = std::min(all.size(), static_cast<size_t>(policy.latest));
      return std::vector<int64_t>(all.end() - static_cast<std::ptrdiff_t>(keep), all.end());
    }
    case VersionPolicy::Kind::kSpecific: {
      std::vector<int64_t> out;
      for (int64_t v : all) {
        if (std::find(policy.specific.begin(), policy.specific.end(), v) !=
            policy.specific.end()) {
          out.push_back(v);
        }
      }
      return out;
    }
  }
  return all;
}

ModelRepository::ModelRepository(ModelRegistry& registry, RepositoryOptions options)
    : registry_(registry), options_(std::move(options)) {}

ModelRepository::~ModelRepository() { StopPolling(); }

StatusOr<std::string> ModelRepository::Resolve(const std::string& relative) const {
  if (options_.root.empty()) {
    return FailedPrecondition("no model repository is configured (server.model_repository)");
  }
  if (relative.empty()) return InvalidArgument("empty path");
  if (relative.find('\0') != std::string::npos) {
    // The kernel would stop at the NUL and open a different file.
    return InvalidArgument("path '" + relative.substr(0, relative.find('\0')) +
                           "\\0...' contains a NUL byte");
  }
  const fs::path rel(relative);
  if (rel.is_absolute()) {
    return InvalidArgument("path '" + relative + "' must be relative to the model repository");
  }
  const fs::path normal = rel.lexically_normal();
  if (normal.empty() || *normal.begin() == "..") {
    return InvalidArgument("path '" + relative + "' leaves the model repository");
  }
  std::error_code ec;
  const fs::path root = fs::canonical(options_.root, ec);
  if (ec) {
    return FailedPrecondition("model repository '" + options_.root +
                              "' cannot be opened: " + ec.message());
  }
  const fs::path full = root / normal;
  if (!fs::exists(full, ec)) {
    return NotFound("'" + relative + "' does not exist in the model repository");
  }
  const fs::path real = fs::canonical(full, ec);
  if (ec) return NotFound("'" + relative + "' cannot be resolved: " + ec.message());
  if (!IsUnder(real, root)) {
    return PermissionDenied("'" + relative + "' is a symlink to '" + real.string() +
                            "', outside the model repository; refused");
  }
  return real.string();
}

StatusOr<RepositoryModel> ModelRepository::ScanOne(const std::string& name) const {
  if (!ValidModelName(name)) {
    return InvalidArgument("model name '" + name + "' must use only [A-Za-z0-9_.-]");
  }
  RepositoryModel model;
  model.name = name;
  model.config.entry.name = name;
  std::error_code ec;
  const fs::path dir = fs::path(options_.root) / name;
  if (!fs::is_directory(dir, ec)) {
    auto flat = Resolve(name + ".pt2");
    if (flat.status().code() == StatusCode::kNotFound) {
      return NotFound("the model repository has no model '" + name + "' (no " + name +
                      "/ folder, no " + name + ".pt2)");
    }
    if (!flat.ok()) return flat.status();
    model.versions[1] = *flat;
    return model;
  }
  if (auto folder = Resolve(name); !folder.ok()) {
    model.problem = folder.status().message();
    return model;
  }
  const std::string config_rel = name + "/" + kModelConfig;
  if (auto config_path = Resolve(config_rel); config_path.ok()) {
    std::ifstream in(*config_path);
    std::stringstream text;
    text << in.rdbuf();
    auto parsed = ParseRepositoryModelConfig(text.str(), config_rel, name);
    if (!parsed.ok()) {
      model.problem = parsed.status().message();
      return model;
    }
    model.config = std::move(parsed).value();
  } else if (config_path.status().code() != StatusCode::kNotFound) {
    model.problem = config_path.status().message();
    return model;
  }
  auto add = [&](int64_t version, const std::string& rel) {
    auto path = Resolve(rel);
    if (path.ok()) {
      model.versions[version] = *path;
    } else if (path.status().code() != StatusCode::kNotFound) {
      model.refused[version] = path.status().message();
    }
  };
  add(1, name + "/" + kPackage);
  for (const auto& child : fs::directory_iterator(dir, ec)) {
    const int64_t version = ParseVersion(child.path().filename().string());
    if (version > 0) add(version, name + "/" + child.path().filename().string() + "/" + kPackage);
  }
  if (model.versions.empty() && model.refused.empty()) {
    model.problem = "folder '" + name + "' has no " + kPackage + " and no <version>/" + kPackage;
  }
  return model;
}

StatusOr<std::vector<RepositoryModel>> ModelRepository::Scan() const {
  if (options_.root.empty()) {
    return FailedPrecondition("no model repository is configured (server.model_repository)");
  }
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& child : fs::directory_iterator(options_.root, ec)) {
    std::string name = child.path().filename().string();
    if (!child.is_directory(ec)) {
      if (child.path().extension() != ".pt2") continue;
      name = child.path().stem().string();
    }
    if (ValidModelName(name) && !options_.configured.contains(name)) names.insert(name);
  }
  if (ec) {
    return FailedPrecondition("cannot list model repository '" + options_.root +
                              "': " + ec.message());
  }
  std::vector<RepositoryModel> out;
  for (const auto& name : names) {
    auto model = ScanOne(name);
    if (model.ok()) out.push_back(std::move(model).value());
  }
  return out;
}

std::string ModelRepository::Stamp(const RepositoryModel& model, int64_t version) {
  std::string stamp;
  auto add = [&](const fs::path& path) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    const auto time = fs::last_write_time(path, ec);
    stamp += std::to_string(size) + "@" +
             std::to_string(time.time_since_epoch().count()) + ";";
  };
  if (auto it = model.versions.find(version); it != model.versions.end()) add(it->second);
  add(fs::path(model.versions.begin()->second).parent_path() / kModelConfig);
  return stamp;
}

Status ModelRepository::ApplyLocked(const RepositoryModel& model, bool retry_failed) {
  auto log = Logger("repository");
  if (!model.problem.empty()) {
    return FailedPrecondition("model '" + model.name + "': " + model.problem);
  }
  const std::vector<int64_t> selected = model.Selected();
  if (selected.empty() && !model.refused.empty()) {
    return PermissionDenied("model '" + model.name + "': " + model.refused.begin()->second);
  }
  if (selected.empty()) {
    return NotFound("model '" + model.name + "': version_policy selects none of its versions");
  }
  ModelConfig config = ToModelConfig(model.config.entry);
  Status first_error = Status::Ok();
  for (int64_t version : selected) {
    if (registry_.GetStatus(model.name, version).ok()) continue;  // loading or loaded
    const Key key{model.name, version};
    const std::string stamp = Stamp(model, version);
    {
      std::lock_guard lock(state_mu_);
      auto failed = failures_.find(key);
      if (!retry_failed && failed != failures_.end() && failed->second.stamp == stamp) {
        if (first_error.ok()) first_error = FailedPrecondition(failed->second.reason);
        continue;  // unchanged since it failed
      }
      managed_.insert(model.name);
    }
    config.path = model.versions.at(version);
    log->info("loading model '{}' version {} from {}", model.name, version, config.path);
    Status loaded = registry_.Load(config, LoadOptions{version, /*keep_failed=*/false});
    std::lock_guard lock(state_mu_);
    if (loaded.ok()) {
      failures_.erase(key);
    } else {
      failures_[key] = {stamp, loaded.ToString()};
      if (first_error.ok()) first_error = loaded;
    }
  }
  // Retire versions no longer selected, but only once a selected one serves:
  // requests must always find a version.
  bool serving = false;
  std::vector<int64_t> retire;
  for (const ModelStatus& s : registry_.ListVersions()) {
    if (s.name != model.name) continue;
    const bool wanted = std::find(selected.begin(), selected.end(), s.version) != selected.end();
    if (wanted && s.state == ModelState::kReady) serving = true;
    if (!wanted) retire.push_back(s.version);
  }
  if (!serving) return first_error;
  for (int64_t version : retire) {
    log->info("model '{}' version {}: no longer selected, unloading after its requests finish",
              model.name, version);
    Status unloaded = registry_.Unload(model.name, options_.drain_timeout, version);
    if (!unloaded.ok() && unloaded.code() != StatusCode::kNotFound && first_error.ok()) {
      first_error = unloaded;
    }
  }
  return first_error;
}

Status ModelRepository::Load(ModelConfig config) {
  if (config.path.empty()) return LoadByName(config.name);
  const std::string requested = config.path;
  PT2_ASSIGN_OR_RETURN(config.path, Resolve(requested));
  Logger("repository")->info("loading model '{}' from {} (requested as '{}')", config.name,
                             config.path, requested);
  return registry_.Load(config, LoadOptions{1, /*keep_failed=*/false});
}

Status ModelRepository::LoadByName(const std::string& name) {
  if (options_.configured.contains(name)) {
    return FailedPrecondition("model '" + name +
                              "' is configured in the server's models list, not loaded from "
                              "the repository");
  }
  std::lock_guard ops(ops_mu_);
  PT2_ASSIGN_OR_RETURN(RepositoryModel model, ScanOne(name));
  return ApplyLocked(model, /*retry_failed=*/true);
}

Status ModelRepository::UnloadLocked(const std::string& name) {
  Status status = registry_.Unload(name, options_.drain_timeout);
  if (status.ok() || status.code() == StatusCode::kNotFound) {
    std::lock_guard lock(state_mu_);
    managed_.erase(name);
  }
  return status;
}

Status ModelRepository::Unload(const std::string& name) {
  std::lock_guard ops(ops_mu_);
  if (options_.mode == "poll") {
    std::lock_guard lock(state_mu_);
    if (managed_.contains(name)) {
      return FailedPrecondition("model '" + name +
                                "' is served from the polled model repository; remove its "
                                "folder there to unload it");
    }
  }
  return UnloadLocked(name);
}

void ModelRepository::Sync() {
  auto log = Logger("repository");
  std::lock_guard ops(ops_mu_);
  auto models = Scan();
  if (!models.ok()) {
    log->warn("repository scan failed, nothing changed: {}", models.status().ToString());
    return;
  }
  std::set<std::string> present;
  for (const RepositoryModel& model : *models) {
    present.insert(model.name);
    Status applied = ApplyLocked(model, /*retry_failed=*/false);
    if (!applied.ok()) log->debug("model '{}': {}", model.name, applied.ToString());
  }
  std::vector<std::string> removed;
  {
    std::lock_guard lock(state_mu_);
    for (const auto& name : managed_) {
      if (!present.contains(name)) removed.push_back(name);
    }
    std::erase_if(failures_, [&](const auto& f) { return !present.contains(f.first.first); });
  }
  for (const auto& name : removed) {
    log->info("model '{}' left the repository: unloading after its requests finish", name);
    if (Status s = UnloadLocked(name); !s.ok()) {
      log->warn("model '{}': unload failed: {}", name, s.ToString());
    }
  }
}

void ModelRepository::StartPolling(std::chrono::milliseconds interval) {
  poller_ = std::thread([this, interval] {
    std::unique_lock lock(poll_mu_);
    while (!poll_wake_.wait_for(lock, interval, [&] { return stop_polling_; })) {
      lock.unlock();
      Sync();
      lock.lock();
    }
  });
}

void ModelRepository::StopPolling() {
  {
    std::lock_guard lock(poll_mu_);
    stop_polling_ = true;
  }
  poll_wake_.notify_all();
  if (poller_.joinable()) poller_.join();
}

std::vector<IndexEntry> ModelRepository::Index() const {
  std::map<Key, IndexEntry> rows;
  for (const ModelStatus& s : registry_.ListVersions()) {
    rows[{s.name, s.version}] = {s.name, s.version, StateName(s.state), s.reason};
  }
  auto models = Scan();
  if (models.ok()) {
    std::lock_guard lock(state_mu_);
    for (const RepositoryModel& model : *models) {
      const std::vector<int64_t> selected = model.Selected();
      std::set<int64_t> versions;
      for (const auto& [v, path] : model.versions) versions.insert(v);
      for (const auto& [v, reason] : model.refused) versions.insert(v);
      for (const auto& [key, failure] : failures_) {
        if (key.first == model.name) versions.insert(key.second);
      }
      if (versions.empty()) {
        // No usable version at all: one row for the model, with the reason.
        if (!rows.contains({model.name, 1})) {
          rows[{model.name, 0}] = {model.name, 0, "UNAVAILABLE", model.problem};
        }
        continue;
      }
      for (int64_t v : versions) {
        if (rows.contains({model.name, v})) continue;
        IndexEntry row{model.name, v, "UNAVAILABLE", "not loaded"};
        if (auto r = model.refused.find(v); r != model.refused.end()) {
          row.reason = r->second;
        } else if (auto f = failures_.find({model.name, v}); f != failures_.end()) {
          row.reason = f->second.reason;
        } else if (!model.problem.empty()) {
          row.reason = model.problem;
        } else if (std::find(selected.begin(), selected.end(), v) == selected.end()) {
          row.reason = "not selected by the model's version_policy";
        }
        rows[{model.name, v}] = std::move(row);
      }
    }
  }
  std::vector<IndexEntry> out;
  for (auto& [key, row] : rows) out.push_back(std::move(row));
  return out;
}

}  // namespace pt2serve::server
