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

void Write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// Maps a library-like file from `path`, as the loader maps a package's
// wrapper .so from its extraction directory; unmapped on destruction.
struct Mapped {
  explicit Mapped(const fs::path& path) {
    Write(path, std::string(4096, 'x'));
    const int fd = ::open(path.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    addr = ::mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    REQUIRE(addr != MAP_FAILED);
  }
  ~Mapped() { ::munmap(addr, 4096); }
  void* addr = nullptr;
};

}  // namespace

TEST_CASE("extraction directories are claimed while in use and swept once released",
          "[extraction_dirs]") {
  const fs::path root = fs::temp_directory_path() /
                        ("pt2serve_extraction_test_" + std::to_string(::getpid()));
  const fs::path outside = root.string() + "_outside";
  fs::remove_all(root);
  fs::remove_all(outside);
  fs::create_directories(root);

  Mapped lib(root / "ours" / "pkg" / "data" / "aotinductor" / "model" / "x.wrapper.so");
  auto claim = std::make_unique<ExtractionClaim>(ExtractionClaim::ClaimNew(root.string()));
  CHECK(claim->size() == 1);
  CHECK(ExtractionClaim::ClaimNew(root.string()).size() == 0);  // one claim per directory
  std::ifstream owner(root / "ours" / kExtractionOwnerFile);
  std::string line;
  std::getline(owner, line);
  CHECK(line == "pid=" + std::to_string(::getpid()));
  CHECK_FALSE(fs::exists(root / "ours" / (std::string(kExtractionOwnerFile) + "." +
                                          std::to_string(::getpid()))));  // no pending file left

  // "dead": an owner file nobody holds (its process died, in any PID
  // namespace); "unmarked": no owner file (another program's, or a load
  // still claiming it); "link": a symlink to a dead owner's directory
  // outside the root (never followed).
  Write(root / "dead" / "model" / "x.so", "x");
  Write(root / "dead" / kExtractionOwnerFile, "pid=1\n");
  Write(root / "unmarked" / "x.so", "x");
  Write(outside / kExtractionOwnerFile, "pid=1\n");
  fs::create_directory_symlink(outside, root / "link");

  CHECK(RemoveStaleExtractionDirs(root.string()) == 1);
  CHECK_FALSE(fs::exists(root / "dead"));
  CHECK(fs::exists(root / "ours" / kExtractionOwnerFile));  // claimed: held by us
  CHECK(fs::exists(root / "unmarked"));
  CHECK(fs::exists(outside / kExtractionOwnerFile));
  CHECK(RemoveStaleExtractionDirs(root.string()) == 0);

  // Moving a claim keeps the lock; releasing the last holder frees it.
  ExtractionClaim moved = std::move(*claim);
  claim.reset();
  CHECK(RemoveStaleExtractionDirs(root.string()) == 0);
  moved = ExtractionClaim();
  CHECK(RemoveStaleExtractionDirs(root.string()) == 1);
  CHECK_FALSE(fs::exists(root / "ours"));
  CHECK(RemoveStaleExtractionDirs((root / "missing").string()) == 0);  // never throws

  fs::remove_all(root);
  fs::remove_all(outside);
}
