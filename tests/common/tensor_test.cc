#include "common/tensor.h"

#include <catch2/catch.hpp>

using namespace pt2serve;

TEST_CASE("dtype names round-trip", "[tensor]") {
  for (DType d : {DType::kBool, DType::kUInt8, DType::kInt8, DType::kInt16, DType::kInt32,
                  DType::kInt64, DType::kFloat16, DType::kBFloat16, DType::kFloat32,
                  DType::kFloat64}) {
    CHECK(DTypeFromName(DTypeName(d)) == d);
  }
  CHECK(DTypeFromName("torch.float16") == DType::kFloat16);
  CHECK_FALSE(DTypeFromName("complex64").has_value());
  CHECK(DTypeSize(DType::kBFloat16) == 2);
  CHECK(DTypeSize(DType::kInt64) == 8);
}

TEST_CASE("signature JSON parses and rejects malformed input", "[tensor]") {
  auto sig = Signature::FromJson(
      R"({"inputs":[{"name":"x","dtype":"float32","shape":[-1,16]}],)"
      R"("outputs":[{"name":"y","dtype":"float16","shape":[-1,8]}],"max_batch_size":64})");
  REQUIRE(sig.ok());
  CHECK(sig->inputs[0].shape == Shape{-1, 16});
  CHECK(sig->outputs[0].dtype == DType::kFloat16);
  CHECK(sig->max_batch_size == 64);
  CHECK(sig->InputIndex("x") == 0);
  CHECK(sig->OutputIndex("x") == -1);
  auto again = Signature::FromJson(sig->ToJson());
  REQUIRE(again.ok());
  CHECK(again->outputs[0].name == "y");

  CHECK(Signature::FromJson("not json").status().code() == StatusCode::kInvalidArgument);
  CHECK(Signature::FromJson(R"({"inputs":[],"outputs":[]})").status().code() ==
        StatusCode::kInvalidArgument);
  auto bad_dtype = Signature::FromJson(
      R"({"inputs":[{"name":"x","dtype":"complex64","shape":[1]}],"outputs":[{"name":"y","dtype":"float32","shape":[1]}]})");
  CHECK_THAT(bad_dtype.status().message(), Catch::Contains("complex64"));
  auto bad_shape = Signature::FromJson(
      R"({"inputs":[{"name":"x","dtype":"float32","shape":"oops"}],"outputs":[{"name":"y","dtype":"float32","shape":[1]}]})");
  CHECK(bad_shape.status().code() == StatusCode::kInvalidArgument);
  // Fuzz finding: floats were cast to integers (undefined behaviour when out of range).
  auto float_dim = Signature::FromJson(
      R"({"inputs":[{"name":"x","dtype":"float32","shape":[2.5]}],"outputs":[{"name":"y","dtype":"float32","shape":[1]}]})");
  CHECK_THAT(float_dim.status().message(), Catch::Contains("shape entries must be integers"));
  auto float_max = Signature::FromJson(
      R"({"inputs":[{"name":"x","dtype":"float32","shape":[-1],"dims":[{"min":1,"max":1e90}]}],"outputs":[{"name":"y","dtype":"float32","shape":[1]}]})");
  CHECK_THAT(float_max.status().message(), Catch::Contains("dims max must be an integer"));
  // The same for max_batch_size (found later, by 16 fuzzing workers on the CUDA host).
  auto float_batch = Signature::FromJson(
      R"({"inputs":[{"name":"x","dtype":"float32","shape":[-1]}],"outputs":[{"name":"y","dtype":"float32","shape":[1]}],"max_batch_size":8e61})");
  CHECK_THAT(float_batch.status().message(),
             Catch::Contains("max_batch_size must be an integer"));
}

TEST_CASE("ValidateAgainstSpec names the tensor and the problem", "[tensor]") {
  TensorSpec spec{"x", DType::kFloat32, {-1, 4}};
  auto t = Tensor::FromVector<float>("x", DType::kFloat32, {2, 4}, std::vector<float>(8));
  CHECK(ValidateAgainstSpec(t, spec).ok());
  t.shape = {2, 5};
  CHECK_THAT(ValidateAgainstSpec(t, spec).message(), Catch::Contains("expected shape [-1, 4]"));
  t.shape = {-2, 4};
  CHECK_THAT(ValidateAgainstSpec(t, spec).message(), Catch::Contains("negative dim"));
  t.shape = {2, 4};
  t.nbytes = 31;
  CHECK_THAT(ValidateAgainstSpec(t, spec).message(), Catch::Contains("needs 32 bytes, got 31"));
  t.nbytes = 32;
  // A shape whose byte size overflows is refused, whatever nbytes says
  // (2^62 * 4 * 4 bytes wraps to 0).
  TensorSpec dynamic{"x", DType::kFloat32, {-1, -1}};
  Tensor huge = t;
  huge.shape = {int64_t{1} << 62, 4};
  huge.nbytes = 0;
  CHECK_THAT(ValidateAgainstSpec(huge, dynamic).message(), Catch::Contains("too large"));
  CHECK(ByteSize({2, 3}, DType::kInt64).value() == 48);
  CHECK(ByteSize({}, DType::kFloat16).value() == 2);
  t.dtype = DType::kInt32;
  CHECK_THAT(ValidateAgainstSpec(t, spec).message(),
             Catch::Contains("expected dtype float32, got int32"));
}

TEST_CASE("Status formats code and message", "[status]") {
  CHECK(Status::Ok().ToString() == "OK");
  Status s = NotFound("model 'm'");
  CHECK(s.ToString() == "NOT_FOUND: model 'm'");
  CHECK(s.WithPrefix("load").message() == "load: model 'm'");
  StatusOr<int> v = 3;
  CHECK(v.ok());
  CHECK(*v == 3);
  StatusOr<int> e = Internal("x");
  CHECK_FALSE(e.ok());
  StatusOr<int> bogus = Status::Ok();  // an OK status without a value is an error
  CHECK(bogus.status().code() == StatusCode::kInternal);
}

TEST_CASE("signature dims: ranges and shared symbols parse, round-trip and are enforced",
          "[tensor]") {
  auto sig = Signature::FromJson(
      R"({"inputs":[{"name":"ids","dtype":"int64","shape":[-1,-1],)"
      R"("dims":[{"min":1,"max":8,"symbol":"batch"},{"min":1,"max":32,"symbol":"seq"}]},)"
      R"({"name":"mask","dtype":"float32","shape":[-1,-1],)"
      R"("dims":[{"min":1,"max":8,"symbol":"batch"},{"min":1,"symbol":"seq"}]}],)"
      R"("outputs":[{"name":"y","dtype":"float32","shape":[-1]}],"max_batch_size":8})");
  REQUIRE(sig.ok());
  CHECK(sig->inputs[0].dims[1].max == 32);
  CHECK(sig->inputs[1].dims[1].max == DimRange::kUnbounded);
  auto again = Signature::FromJson(sig->ToJson());
  REQUIRE(again.ok());
  CHECK(again->ToJson() == sig->ToJson());

  auto ids = Tensor::FromVector("ids", DType::kInt64, {2, 33}, std::vector<int64_t>(66));
  Status s = ValidateAgainstSpec(ids, sig->inputs[0]);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(),
             Catch::Contains("input 'ids': dim 1 ('seq') is 33, outside the model's range 1..32"));
  ids = Tensor::FromVector("ids", DType::kInt64, {2, 5}, std::vector<int64_t>(10));
  CHECK(ValidateAgainstSpec(ids, sig->inputs[0]).ok());
  auto mask = Tensor::FromVector("mask", DType::kFloat32, {2, 6}, std::vector<float>(12));
  CHECK(ValidateAgainstSpec(mask, sig->inputs[1]).ok());
  s = CheckSharedDims(*sig, {&ids, &mask});
  CHECK_THAT(s.message(), Catch::Contains("inputs must agree on dim 'seq': input 'ids' dim 1 is 5, "
                                          "input 'mask' dim 1 is 6"));
  mask = Tensor::FromVector("mask", DType::kFloat32, {2, 5}, std::vector<float>(10));
  CHECK(CheckSharedDims(*sig, {&ids, &mask}).ok());

  CHECK_FALSE(Signature::FromJson(
                  R"({"inputs":[{"name":"x","dtype":"float32","shape":[-1],"dims":[]}],)"
                  R"("outputs":[{"name":"y","dtype":"float32","shape":[1]}]})")
                  .ok());
  CHECK_FALSE(Signature::FromJson(
                  R"({"inputs":[{"name":"x","dtype":"float32","shape":[-1],)"
                  R"("dims":[{"min":5,"max":2}]}],"outputs":[{"name":"y","dtype":"float32","shape":[1]}]})")
                  .ok());
}
