#include "devices/cpu_threads.h"

#include <catch2/catch.hpp>
#include <future>
#include <thread>

using namespace pt2serve;

TEST_CASE("each thread keeps its own intra-op thread count", "[cpu_threads]") {
  const int fallback = DefaultCpuThreads();
  REQUIRE(fallback >= 1);
  std::promise<void> first_set, second_set;
  int seen_first = 0, seen_second = 0, seen_default = 0;
  // The first thread sets 1, the second sets 2 afterwards; the first must
  // still see 1 (a bare at::set_num_threads would be reset to 2 by ATen's
  // lazy per-thread initialisation on the first query).
  std::thread first([&] {
    SetThisThreadCpuThreads(1);
    first_set.set_value();
    second_set.get_future().wait();
    seen_first = ThisThreadCpuThreads();
  });
  std::thread second([&] {
    first_set.get_future().wait();
    SetThisThreadCpuThreads(2);
    seen_second = ThisThreadCpuThreads();
    second_set.set_value();
  });
  first.join();
  second.join();
  // 0 means the process default, not whatever another thread set last.
  std::thread third([&] {
    SetThisThreadCpuThreads(0);
    seen_default = ThisThreadCpuThreads();
  });
  third.join();
  CHECK(seen_first == 1);
  CHECK(seen_second == 2);
  CHECK(seen_default == fallback);
}
