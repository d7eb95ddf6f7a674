#include "server/model_repository.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::server;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

RepositoryOptions Options(const std::string& root, std::string mode = "explicit") {
  RepositoryOptions options;
  options.root = root;
  options.mode = std::move(mode);
  options.drain_timeout = 5s;
  return options;
}

// Copies a zoo package to root/rel (creating folders).
void Put(const std::string& root, const std::string& rel, const std::string& package = "mlp") {
  fs::create_directories((fs::path(root) / rel).parent_path());
  fs::copy_file(testing::PackagePath(package), fs::path(root) / rel,
                fs::copy_options::overwrite_existing);
}

std::vector<std::string> Versions(const ModelRegistry& registry) {
  std::vector<std::string> out;
  for (const auto& s : registry.ListVersions()) {
    out.push_back(s.name + "/" + std::to_string(s.version) + ":" +
                  std::string(ModelStateName(s.state)));
  }
  return out;
}

const IndexEntry* Row(const std::vector<IndexEntry>& index, const std::string& name,
                      int64_t version) {
  for (const auto& e : index) {
    if (e.name == name && e.version == version) return &e;
  }
  return nullptr;
}

}  // namespace

TEST_CASE("repository paths cannot leave the root", "[repository]") {
  const std::string root = testing::TempDir();
  const std::string outside = testing::TempDir();
  fs::create_directories(root + "/sub");
  std::ofstream(root + "/sub/a.pt2") << "x";
  std::ofstream(outside + "/b.pt2") << "x";
  fs::create_symlink(outside + "/b.pt2", root + "/escape.pt2");
  fs::create_symlink(outside, root + "/escape_dir");
  fs::create_symlink(root + "/sub/a.pt2", root + "/inside.pt2");
  ModelRegistry registry;
  ModelRepository repo(registry, Options(root));

  CHECK(repo.Resolve("sub/a.pt2").ok());
  CHECK(repo.Resolve("sub/../sub/a.pt2").ok());
  CHECK(repo.Resolve("../" + fs::path(outside).filename().string() + "/b.pt2").status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(repo.Resolve("sub/../../x.pt2").status().code() == StatusCode::kInvalidArgument);
  CHECK(repo.Resolve(outside + "/b.pt2").status().code() == StatusCode::kInvalidArgument);
  // Symlinks are resolved: inside the root they are followed, leaving it is refused.
  auto inside = repo.Resolve("inside.pt2");
  REQUIRE(inside.ok());
  CHECK(*inside == fs::canonical(root + "/sub/a.pt2").string());
  auto escape = repo.Resolve("escape.pt2");
  CHECK(escape.status().code() == StatusCode::kPermissionDenied);
  CHECK_THAT(escape.status().message(), Catch::Contains("outside the model repository"));
  CHECK(repo.Resolve("escape_dir/b.pt2").status().code() == StatusCode::kPermissionDenied);
  // An embedded NUL would make the kernel open "sub/a.pt2".
  const std::string with_nul("sub/a.pt2\0.txt", 14);
  auto nul = repo.Resolve(with_nul);
  CHECK(nul.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(nul.status().message(), Catch::Contains("NUL"));
  CHECK(repo.Resolve("missing.pt2").status().code() == StatusCode::kNotFound);

  ModelRepository none(registry, Options(""));
  CHECK(none.Resolve("a.pt2").status().code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("loading by name finds NAME.pt2 under the root", "[repository]") {
  ModelRegistry registry;
  ModelRepository repo(registry, Options(testing::ModelDir()));
  ModelConfig config;
  config.name = "mlp";
  REQUIRE(repo.Load(config).ok());
  CHECK(registry.Get("mlp").ok());
  config.name = "nonexistent";
  CHECK(repo.Load(config).code() == StatusCode::kNotFound);
  REQUIRE(repo.Unload("mlp").ok());
}

TEST_CASE("scan reads versions, config.yaml and version policies", "[repository]") {
  const std::string root = testing::TempDir();
  Put(root, "flat.pt2");
  Put(root, "single/model.pt2");
  Put(root, "multi/1/model.pt2");
  Put(root, "multi/3/model.pt2");
  fs::create_directories(root + "/multi/notaversion");
  fs::create_directories(root + "/multi/007");  // not a canonical number: ignored
  Put(root, "pinned/1/model.pt2");
  Put(root, "pinned/2/model.pt2");
  std::ofstream(root + "/pinned/config.yaml")
      << "num_runners: 2\nversion_policy: {specific: [1]}\n";
  Put(root, "every/1/model.pt2");
  Put(root, "every/2/model.pt2");
  std::ofstream(root + "/every/config.yaml") << "version_policy: all\n";
  fs::create_directories(root + "/broken");
  std::ofstream(root + "/broken/config.yaml") << "num_runner: 2\n";  // typo
  fs::create_directories(root + "/empty");
  fs::create_directories(root + "/.hidden");
  std::ofstream(root + "/notes.txt") << "not a model";

  ModelRegistry registry;
  ModelRepository repo(registry, Options(root));
  auto scanned = repo.Scan();
  REQUIRE(scanned.ok());
  std::map<std::string, RepositoryModel> by_name;
  for (auto& m : *scanned) by_name[m.name] = m;
  CHECK(by_name.size() == 7);
  CHECK(by_name["flat"].Selected() == std::vector<int64_t>{1});
  CHECK(by_name["single"].Selected() == std::vector<int64_t>{1});
  CHECK(by_name["multi"].versions.size() == 2);
  CHECK(by_name["multi"].Selected() == std::vector<int64_t>{3});  // default: latest 1
  CHECK(by_name["pinned"].Selected() == std::vector<int64_t>{1});
  CHECK(by_name["pinned"].config.entry.num_runners == 2);
  CHECK(by_name["every"].Selected() == std::vector<int64_t>{1, 2});
  CHECK_THAT(by_name["broken"].problem, Catch::Contains("broken/config.yaml") &&
                                            Catch::Contains("num_runner"));
  CHECK_THAT(by_name["empty"].problem, Catch::Contains("no model.pt2"));

  CHECK(repo.LoadByName("broken").code() == StatusCode::kFailedPrecondition);
  CHECK(repo.LoadByName("ghost").code() == StatusCode::kNotFound);
  REQUIRE(repo.LoadByName("multi").ok());
  CHECK(Versions(registry) == std::vector<std::string>{"multi/3:READY"});
  auto handle = registry.Get("multi");
  REQUIRE(handle.ok());
  CHECK(handle->version() == 3);

  auto index = repo.Index();
  REQUIRE(Row(index, "multi", 3) != nullptr);
  CHECK(Row(index, "multi", 3)->state == "READY");
  CHECK(Row(index, "multi", 1)->state == "UNAVAILABLE");
  CHECK_THAT(Row(index, "multi", 1)->reason, Catch::Contains("version_policy"));
  CHECK(Row(index, "flat", 1)->reason == "not loaded");
  CHECK_THAT(Row(index, "broken", 0)->reason, Catch::Contains("num_runner"));
}

TEST_CASE("a repository model that leaves the root through a symlink is refused",
          "[repository]") {
  const std::string root = testing::TempDir();
  const std::string outside = testing::TempDir();
  Put(outside, "1/model.pt2");
  fs::create_symlink(outside, root + "/linked");
  fs::create_directories(root + "/partly/2");
  Put(root, "partly/1/model.pt2");
  fs::create_symlink(outside + "/1/model.pt2", root + "/partly/2/model.pt2");
  ModelRegistry registry;
  ModelRepository repo(registry, Options(root));
  CHECK(repo.LoadByName("linked").code() == StatusCode::kFailedPrecondition);
  CHECK_FALSE(registry.Contains("linked"));
  // Version 2 is refused; version 1 (the latest usable) serves.
  REQUIRE(repo.LoadByName("partly").ok());
  CHECK(Versions(registry) == std::vector<std::string>{"partly/1:READY"});
  auto index = repo.Index();
  CHECK_THAT(Row(index, "partly", 2)->reason, Catch::Contains("outside the model repository"));
  CHECK_THAT(Row(index, "linked", 0)->reason, Catch::Contains("outside the model repository"));
}

TEST_CASE("sync follows the repository: add, re-version, remove", "[repository]") {
  const std::string root = testing::TempDir();
  Put(root, "m/1/model.pt2");
  ModelRegistry registry;
  ModelRepository repo(registry, Options(root, "poll"));
  repo.Sync();
  CHECK(Versions(registry) == std::vector<std::string>{"m/1:READY"});
  // In poll mode the folder decides: unloading by request is refused.
  CHECK(repo.Unload("m").code() == StatusCode::kFailedPrecondition);

  // A request holding version 1 keeps it alive until it is done.
  auto held = registry.Get("m");
  REQUIRE(held.ok());
  Put(root, "m/2/model.pt2");
  Put(root, "n/model.pt2", "cnn");
  std::thread sync([&] { repo.Sync(); });
  testing::Reference ref = testing::LoadReference("mlp");
  // Version 2 takes new requests as soon as it is READY; 1 drains.
  for (int i = 0; i < 500; ++i) {
    auto now = registry.Get("m");
    if (now.ok() && now->version() == 2) break;
    std::this_thread::sleep_for(10ms);
  }
  CHECK(registry.Get("m")->version() == 2);
  CHECK((*held)->Infer({"", ref.inputs, {}, kNoDeadline}).ok());
  *held = ModelHandle();
  sync.join();
  CHECK(Versions(registry) == std::vector<std::string>{"m/2:READY", "n/1:READY"});

  fs::remove_all(root + "/n");
  repo.Sync();
  CHECK(Versions(registry) == std::vector<std::string>{"m/2:READY"});
}

TEST_CASE("a failed repository load leaves no entry and is retried when the file changes",
          "[repository]") {
  const std::string root = testing::TempDir();
  fs::create_directories(root + "/bad");
  std::ofstream(root + "/bad/model.pt2") << "not a zip";
  // Declared before the registry, whose destructor unloads "bad" and
  // notifies the observer.
  int failed_events = 0;
  ModelRegistry registry;
  registry.AddObserver(
      [&](const ModelStatus& s) { failed_events += s.state == ModelState::kFailed; });
  ModelRepository repo(registry, Options(root, "all"));
  repo.Sync();
  CHECK_FALSE(registry.Contains("bad"));
  CHECK(failed_events == 1);
  auto index = repo.Index();
  REQUIRE(Row(index, "bad", 1) != nullptr);
  CHECK(Row(index, "bad", 1)->state == "UNAVAILABLE");
  CHECK_FALSE(Row(index, "bad", 1)->reason.empty());
  repo.Sync();  // unchanged: not tried again
  CHECK(failed_events == 1);
  CHECK(repo.LoadByName("bad").code() != StatusCode::kOk);  // by request: always tried
  CHECK(failed_events == 2);
  Put(root, "bad/model.pt2");  // fixed
  repo.Sync();
  CHECK(Versions(registry) == std::vector<std::string>{"bad/1:READY"});
}
