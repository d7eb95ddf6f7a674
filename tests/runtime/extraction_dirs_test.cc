#include "runtime/extraction_dirs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

using namespace pt2serve;
namespace fs = std::filesystem;

namespace {

std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

void Write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

}  // namespace

TEST_CASE("extraction directories are claimed by their process and swept once it is gone",
          "[extraction_dirs]") {
  const fs::path root = fs::temp_directory_path() /
                        ("pt2serve_extraction_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);

  // "ours": a library mapped from <root>/ours/.../data/aotinductor/, as the
  // loader maps a package's wrapper .so.
  const fs::path lib = root / "ours" / "pkg" / "data" / "aotinductor" / "model" / "x.wrapper.so";
  Write(lib, std::string(4096, 'x'));
  const int fd = ::open(lib.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  void* mapped = ::mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  REQUIRE(mapped != MAP_FAILED);
  CHECK(ClaimExtractionDirs(root.string()) == 1);
  CHECK(ClaimExtractionDirs(root.string()) == 0);  // claimed once
  const std::string owner = Slurp(root / "ours" / kExtractionOwnerFile);
  CHECK_THAT(owner, Catch::StartsWith("pid=" + std::to_string(::getpid()) + " start="));
  const std::string pidns = owner.substr(owner.find(" pidns=") + 7);
  REQUIRE_FALSE(pidns.empty());

  // "dead": our PID but another start time, i.e. an exited process whose PID
  // was reused; "foreign": a dead owner in another PID namespace; "unmarked":
  // no owner file (not ours, or a load still claiming it); "link": a symlink
  // to a dead owner's directory outside the root (never followed).
  Write(root / "dead" / "model" / "x.so", "x");
  Write(root / "dead" / kExtractionOwnerFile,
        "pid=" + std::to_string(::getpid()) + " start=1 pidns=" + pidns + "\n");
  Write(root / "foreign" / kExtractionOwnerFile, "pid=1 start=1 pidns=pid:[1]\n");
  Write(root / "unmarked" / "x.so", "x");
  const fs::path outside = root.string() + "_outside";
  Write(outside / kExtractionOwnerFile,
        "pid=" + std::to_string(::getpid()) + " start=1 pidns=" + pidns + "\n");
  fs::create_directory_symlink(outside, root / "link");

  CHECK(RemoveStaleExtractionDirs(root.string()) == 1);
  CHECK_FALSE(fs::exists(root / "dead"));
  CHECK(fs::exists(root / "ours" / kExtractionOwnerFile));  // its owner (we) is alive
  CHECK(fs::exists(root / "foreign"));
  CHECK(fs::exists(root / "unmarked"));
  CHECK(fs::exists(outside / kExtractionOwnerFile));
  CHECK(RemoveStaleExtractionDirs(root.string()) == 0);
  CHECK(RemoveStaleExtractionDirs((root / "missing").string()) == 0);  // never throws

  ::munmap(mapped, 4096);
  fs::remove_all(root);
  fs::remove_all(outside);
}
