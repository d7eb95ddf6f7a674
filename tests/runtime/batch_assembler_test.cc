#include "runtime/batch_assembler.h"

#include <catch2/catch.hpp>

using namespace pt2serve;

namespace {

Tensor Rows(const std::string& name, int64_t rows, int64_t cols, float first) {
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < v.size(); ++i) v[i] = first + static_cast<float>(i);
  return Tensor::FromVector(name, DType::kFloat32, {rows, cols}, std::move(v));
}

}  // namespace

TEST_CASE("ShapeKey ignores the batch dim only", "[batching]") {
  Tensor a = Rows("x", 2, 4, 0), b = Rows("x", 5, 4, 0), c = Rows("x", 2, 3, 0);
  CHECK(ShapeKey({&a}) == ShapeKey({&b}));
  CHECK(ShapeKey({&a}) != ShapeKey({&c}));
  // Rank markers keep [2,4]+[2] apart from [2]+[2,4].
  Tensor v = Tensor::FromVector("v", DType::kFloat32, {2}, std::vector<float>{1, 2});
  CHECK(ShapeKey({&a, &v}) != ShapeKey({&v, &a}));
}

TEST_CASE("ConcatRows joins along dim 0 and SplitRows cuts back without copying",
          "[batching]") {
  Tensor a = Rows("x", 2, 3, 0), b = Rows("x", 1, 3, 100);
  std::vector<Tensor> joined = ConcatRows({{&a}, {&b}});
  REQUIRE(joined.size() == 1);
  CHECK(joined[0].shape == Shape{3, 3});
  const float* j = joined[0].As<float>();
  CHECK(j[0] == 0);
  CHECK(j[5] == 5);
  CHECK(j[6] == 100);
  CHECK(j[8] == 102);

  std::vector<std::vector<Tensor>> split;
  REQUIRE(SplitRows(joined, {2, 1}, split).ok());
  REQUIRE(split.size() == 2);
  CHECK(split[0][0].shape == Shape{2, 3});
  CHECK(split[1][0].shape == Shape{1, 3});
  CHECK(split[1][0].As<float>()[0] == 100);
  CHECK(split[1][0].data == joined[0].data + 6 * sizeof(float));  // shares the batch output
  CHECK(split[1][0].owner == joined[0].owner);
}

TEST_CASE("SplitRows refuses an output that does not follow the batch", "[batching]") {
  Tensor pooled = Rows("pooled", 1, 3, 0);  // dim 0 is 1 for a batch of 3 rows
  std::vector<std::vector<Tensor>> split;
  Status s = SplitRows({pooled}, {2, 1}, split);
  CHECK(s.code() == StatusCode::kInternal);
  CHECK_THAT(s.message(), Catch::Contains("'pooled'"));
}
