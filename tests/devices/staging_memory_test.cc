#include "devices/staging_memory.h"

#include <catch2/catch.hpp>
#include <cstring>

using namespace pt2serve;

TEST_CASE("staging memory for CPU models is ordinary writable heap memory", "[staging_memory]") {
  for (const std::vector<DeviceSpec>& devices :
       {std::vector<DeviceSpec>{}, std::vector<DeviceSpec>{DeviceSpec{}}}) {
    auto block = AllocateStagingMemory(devices, 3 << 20);
    REQUIRE(block.ok());
    CHECK_FALSE(block->pinned);
    CHECK(block->nbytes == size_t{3} << 20);
    REQUIRE(block->data != nullptr);
    std::memset(block->data, 0x7f, block->nbytes);  // writable to the last byte
    CHECK(block->data[block->nbytes - 1] == std::byte{0x7f});
    ReleaseCachedStagingMemory(devices);  // no-op, and must not disturb the block
    CHECK(block->data[0] == std::byte{0x7f});
  }
  CHECK(StagingFootprint({}, 3 << 20) == size_t{3} << 20);  // heap blocks are not rounded
  CHECK(StagingFootprint({DeviceSpec{}}, 1000) == 1000);
  auto empty = AllocateStagingMemory({}, 0);
  REQUIRE(empty.ok());
  CHECK(empty->data != nullptr);
  CHECK(empty->nbytes == 0);
}

TEST_CASE("staging memory outlives its handle while an owner copy holds it", "[staging_memory]") {
  std::shared_ptr<void> keep;
  std::byte* data = nullptr;
  {
    auto block = AllocateStagingMemory({}, 4096);
    REQUIRE(block.ok());
    data = block->data;
    std::memset(data, 1, 4096);
    keep = block->owner;
  }
  CHECK(data[4095] == std::byte{1});  // still alive through `keep` (ASan would object)
}

TEST_CASE("an accelerator without a host allocator gets unpinned memory, not an error",
          "[staging_memory]") {
  // No Linux LibTorch registers a host allocator for MPS (and a CPU-only one
  // registers none at all): the memory comes from the heap instead.
  auto block = AllocateStagingMemory({DeviceSpec{DeviceKind::kMps, 0}}, 1024);
  REQUIRE(block.ok());
  CHECK_FALSE(block->pinned);
  CHECK(StagingFootprint({DeviceSpec{DeviceKind::kMps, 0}}, 1000) == 1000);
  ReleaseCachedStagingMemory({DeviceSpec{DeviceKind::kMps, 0}});
}
