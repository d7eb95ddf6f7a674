#include "server/model_repository.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::server;
namespace fs = std::filesystem;

TEST_CASE("repository paths cannot leave the root", "[repository]") {
  const std::string root = testing::TempDir();
  const std::string outside = testing::TempDir();
  fs::create_directories(root + "/sub");
  std::ofstream(root + "/sub/a.pt2") << "x";
  std::ofstream(outside + "/b.pt2") << "x";
  fs::create_symlink(outside + "/b.pt2", root + "/escape.pt2");
  ModelRegistry registry;
  ModelRepository repo(registry, root, ModelConfig{});

  CHECK(repo.Resolve("sub/a.pt2").ok());
  CHECK(repo.Resolve("sub/../sub/a.pt2").ok());
  CHECK(repo.Resolve("../" + fs::path(outside).filename().string() + "/b.pt2").status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(repo.Resolve("sub/../../x.pt2").status().code() == StatusCode::kInvalidArgument);
  CHECK(repo.Resolve(outside + "/b.pt2").status().code() == StatusCode::kInvalidArgument);
  // Links placed in the repository by the operator are followed.
  CHECK(repo.Resolve("escape.pt2").ok());
  CHECK(repo.Resolve("missing.pt2").status().code() == StatusCode::kNotFound);

  ModelRepository none(registry, "", ModelConfig{});
  CHECK(none.Resolve("a.pt2").status().code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("loading by name finds NAME.pt2 under the root", "[repository]") {
  ModelRegistry registry;
  ModelRepository repo(registry, testing::ModelDir(), ModelConfig{});
  ModelConfig config;
  config.name = "mlp";
  REQUIRE(repo.Load(config).ok());
  CHECK(registry.Get("mlp").ok());
  config.name = "nonexistent";
  CHECK(repo.Load(config).code() == StatusCode::kNotFound);
  REQUIRE(repo.Unload("mlp").ok());
}
