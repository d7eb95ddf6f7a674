#include "devices/device_staging.h"

#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <vector>

#include "tests/support/device_staging_feed.h"

using namespace pt2serve;

// On a CPU "device" the ring is ordinary memory and copies are synchronous,
// so what is left to check is the ring's bookkeeping: every byte of every
// tensor arrives at its place whatever the piece sizes and however many
// threads copy at once.
TEST_CASE("device staging puts every piece at its place through the ring", "[device_staging]") {
  // More bytes than the ring holds, sizes that are not multiples of a block.
  const std::vector<size_t> sizes = {3 * DeviceStaging::kBlockBytes + 12345,
                                     5 * DeviceStaging::kBlockBytes - 7, 1, 0,
                                     DeviceStaging::kRingBytes + 3};
  std::vector<std::vector<std::byte>> source;
  std::mt19937_64 random(42);
  for (size_t n : sizes) {
    std::vector<std::byte> bytes(n);
    for (auto& b : bytes) b = static_cast<std::byte>(random());
    source.push_back(std::move(bytes));
  }
  auto staging = DeviceStaging::Create(DeviceSpec{}, sizes);
  REQUIRE(staging.ok());

  // Four threads, each taking every fourth piece of 3 MiB + 1 of each tensor.
  REQUIRE(testing::FeedInPieces(**staging, source, (3 << 20) + 1, 4) == 0);
  REQUIRE((*staging)->Finish().ok());
  size_t total = 0;
  for (size_t n : sizes) total += n;
  CHECK((*staging)->Stats().bytes == total);

  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO("tensor " << i << " of " << sizes[i] << " bytes");
    const std::byte* data = nullptr;
    std::shared_ptr<const void> owner = (*staging)->TakeTensor(i, &data);
    REQUIRE(owner != nullptr);
    if (sizes[i] != 0) CHECK(std::memcmp(data, source[i].data(), sizes[i]) == 0);
  }
}

TEST_CASE("device staging's tensors outlive the staging through their owners",
          "[device_staging]") {
  std::vector<std::byte> bytes(1000, std::byte{9});
  std::shared_ptr<const void> owner;
  const std::byte* data = nullptr;
  {
    auto staging = DeviceStaging::Create(DeviceSpec{}, {bytes.size()});
    REQUIRE(staging.ok());
    REQUIRE((*staging)->Copy(0, 0, bytes.data(), bytes.size()).ok());
    REQUIRE((*staging)->Finish().ok());
    owner = (*staging)->TakeTensor(0, &data);
  }
  CHECK(data[999] == std::byte{9});  // still alive through `owner` (ASan would object)
}

// The ring pins no more than the set needs: a push of a tiny model does not
// reserve (or pin) 64 MiB.
TEST_CASE("device staging's ring is sized to the set", "[device_staging]") {
  constexpr size_t kBlock = DeviceStaging::kBlockBytes;
  CHECK(DeviceStaging::RingBytes(0) == 1);
  CHECK(DeviceStaging::RingBytes(6712) == 6712);
  CHECK(DeviceStaging::RingBytes(kBlock - 1) == kBlock - 1);
  CHECK(DeviceStaging::RingBytes(kBlock) == kBlock);
  CHECK(DeviceStaging::RingBytes(kBlock + 1) == 2 * kBlock);
  CHECK(DeviceStaging::RingBytes(3 * kBlock) == 3 * kBlock);
  CHECK(DeviceStaging::RingBytes(100 * kBlock) == DeviceStaging::kRingBytes);

  // A set smaller than a block goes through its one block in pieces.
  std::vector<std::byte> bytes(5000);
  for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<std::byte>(k * 7);
  auto staging = DeviceStaging::Create(DeviceSpec{}, {3000, 2000});
  REQUIRE(staging.ok());
  REQUIRE((*staging)->Copy(0, 0, bytes.data(), 3000).ok());
  REQUIRE((*staging)->Copy(1, 0, bytes.data() + 3000, 2000).ok());
  REQUIRE((*staging)->Finish().ok());
  const DeviceStaging::CopyStats stats = (*staging)->Stats();
  CHECK(stats.bytes == 5000);
  CHECK(stats.copies == 2);
  const std::byte* data = nullptr;
  auto owner = (*staging)->TakeTensor(1, &data);
  CHECK(std::memcmp(data, bytes.data() + 3000, 2000) == 0);
}
