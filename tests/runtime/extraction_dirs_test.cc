#include "runtime/extraction_dirs.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
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

TEST_CASE("a failed load removes the directory it extracted, and nothing else",
          "[extraction_dirs]") {
  const fs::path root = fs::temp_directory_path() /
                        ("pt2serve_failed_load_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  const fs::path layout = fs::path("pkg") / "data" / "aotinductor" / "model";
  Write(root / "before" / layout / "x.so", "x");  // there before the load began

  ExtractionLoadGuard load(root.string());
  REQUIRE(load.locked());
  // What the failed load extracted, and what others did meanwhile: a sibling
  // pt2serve load that succeeded (claimed), a program that maps its library,
  // one with a file open, and a directory of another layout.
  Write(root / "failed" / layout / "x.so", "x");
  Write(root / "claimed" / layout / "x.so", "x");
  Write(root / "claimed" / kExtractionOwnerFile, "pid=1\n");
  Mapped mapped(root / "mapped" / layout / "x.so");
  Write(root / "open" / layout / "x.so", "x");
  const int open_fd = ::open((root / "open" / layout / "x.so").c_str(), O_RDONLY);
  REQUIRE(open_fd >= 0);
  Write(root / "other" / "x", "x");

  SECTION("not while another load may be between extracting and claiming") {
    auto sibling = std::make_unique<ExtractionLoadGuard>(root.string());
    REQUIRE(sibling->locked());
    CHECK(load.RemoveLeftovers(std::chrono::milliseconds(50)) == 0);
    CHECK(fs::exists(root / "failed"));
    sibling.reset();
    CHECK(load.RemoveLeftovers(std::chrono::milliseconds(50)) == 1);
  }
  SECTION("at once when no other load runs") {
    CHECK(load.RemoveLeftovers() == 1);
    // Done: the lock is free for the next load.
    ExtractionLoadGuard next(root.string());
    CHECK(next.locked());
  }
  CHECK_FALSE(fs::exists(root / "failed"));
  for (const char* kept : {"before", "claimed", "mapped", "open", "other"}) {
    INFO(kept);
    CHECK(fs::exists(root / kept));
  }
  ::close(open_fd);
  fs::remove_all(root);
}
