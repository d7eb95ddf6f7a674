// Model::Load of packages without pt2serve metadata: signature derived from
// the package (outputs learned by running it once), declared signatures
// checked against it, and every input checked on every dim.
#include <catch2/catch.hpp>

#include "runtime/model.h"
#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::testing;

namespace {

StatusOr<std::shared_ptr<Model>> Load(const std::string& path,
                                      std::optional<Signature> declared = std::nullopt) {
  ModelConfig config;
  config.name = "plain";
  config.path = path;
  config.signature = std::move(declared);
  return Model::Load(config);
}

Tensor Ids(const std::string& name, Shape shape) {
  std::vector<int64_t> v(static_cast<size_t>(NumElements(shape)), 3);
  return Tensor::FromVector(name, DType::kInt64, std::move(shape), std::move(v));
}

Tensor Floats(const std::string& name, Shape shape) {
  std::vector<float> v(static_cast<size_t>(NumElements(shape)), 1.0f);
  return Tensor::FromVector(name, DType::kFloat32, std::move(shape), std::move(v));
}

Signature BlockDeclared() {
  Signature sig;
  sig.inputs = {TensorSpec{"tokens", DType::kInt64, {-1, -1}},
                TensorSpec{"mask", DType::kFloat32, {-1, -1}}};
  sig.outputs = {TensorSpec{"logits", DType::kFloat32, {-1, -1, 4}},
                 TensorSpec{"best", DType::kInt64, {-1, -1}},
                 TensorSpec{"pooled", DType::kFloat32, {-1, -1}}};
  return sig;
}

}  // namespace

TEST_CASE("plain block: derived signature with probed outputs", "[plain]") {
  auto model = Load(PlainPackagePath("block"));
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  const PackageInfo& info = (*model)->info();
  CHECK(info.signature_source == "derived from the package");
  CHECK_FALSE(info.runtime_constant_folding);
  const Signature& sig = info.signature;
  REQUIRE(sig.outputs.size() == 3);
  CHECK(sig.outputs[0].dtype == DType::kFloat32);
  CHECK(sig.outputs[0].shape == Shape{-1, -1, 4});
  CHECK(sig.outputs[1].dtype == DType::kInt64);
  CHECK(sig.outputs[1].shape == Shape{-1, -1});
  CHECK(sig.outputs[2].shape == Shape{-1, -1});
  CHECK(sig.max_batch_size == 64);
  CHECK(info.constants.size() == 8);

  // Size 1 in both dims (the package records >= 2) runs.
  InferRequest request;
  request.inputs = {Ids("input__0", {1, 1}), Floats("input__1", {1, 1})};
  auto response = (*model)->Infer(request);
  INFO(response.status().ToString());
  REQUIRE(response.ok());
  CHECK(response->outputs[0].shape == Shape{1, 1, 4});
  CHECK(response->outputs[1].dtype == DType::kInt64);

  // Every dim of every input is checked before the container sees it.
  auto expect = [&](std::vector<Tensor> inputs, const std::string& fragment) {
    InferRequest bad;
    bad.inputs = std::move(inputs);
    auto r = (*model)->Infer(bad);
    INFO(fragment);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::Contains(fragment));
  };
  expect({Ids("input__0", {2, 33}), Floats("input__1", {2, 33})},
         "input 'input__0': dim 1 (");
  expect({Ids("input__0", {2, 4}), Floats("input__1", {2, 33})}, "input 'input__1': dim 1");
  expect({Ids("input__0", {2, 4}), Floats("input__1", {2, 5})}, "inputs must agree on dim");
  expect({Ids("input__0", {65, 4}), Floats("input__1", {65, 4})}, "outside the model's range 1..64");
  expect({Floats("input__0", {2, 4}), Floats("input__1", {2, 4})}, "expected dtype int64");
}

TEST_CASE("pt2serve package without its metadata loads like a plain one", "[plain]") {
  auto model = Load(FixturePath("no_signature.pt2"));
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  const Signature& sig = (*model)->signature();
  CHECK((*model)->info().runtime_constant_folding);
  REQUIRE(sig.inputs.size() == 1);
  CHECK(sig.inputs[0].name == "input__0");
  CHECK(sig.inputs[0].shape == Shape{-1, 16});
  CHECK(sig.outputs[0].name == "output__0");
  CHECK(sig.outputs[0].shape == Shape{-1, 8});
  CHECK(sig.max_batch_size == 1024);
  Reference ref = LoadReference("mlp");
  InferRequest request;
  request.inputs = ref.inputs;
  request.inputs[0].name = "input__0";
  auto response = (*model)->Infer(request);
  REQUIRE(response.ok());
  Tensor expected = ref.outputs[0];
  expected.name = "output__0";
  CHECK(CompareTensors(response->outputs[0], expected) == "");
}

TEST_CASE("plain mlp: folded parameters are not updatable", "[plain]") {
  auto model = Load(PlainPackagePath("mlp"));
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  const PackageInfo& info = (*model)->info();
  CHECK_FALSE(info.runtime_constant_folding);
  std::vector<std::string> names;
  for (const auto& c : info.constants) names.push_back(c.fqn);
  CHECK(names == std::vector<std::string>{"fc1.bias", "fc1.weight", "fc2.weight"});
  CHECK(info.signature.outputs[0].name == "y");
  CHECK(info.signature.outputs[0].shape == Shape{4, 8});
  CHECK(info.signature.outputs[1].shape == Shape{4});
}

TEST_CASE("declared signatures: names served, contradictions fail the load", "[plain]") {
  auto model = Load(PlainPackagePath("block"), BlockDeclared());
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  CHECK((*model)->info().signature_source == "declared in the model config");
  CHECK((*model)->signature().inputs[0].name == "tokens");
  CHECK((*model)->signature().inputs[1].dims[1].max == 32);

  Signature bad = BlockDeclared();
  bad.outputs[1].dtype = DType::kInt32;  // only running the model can tell
  auto s = Load(PlainPackagePath("block"), bad).status();
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("'best' has dtype int32, the package returns int64"));

  bad = BlockDeclared();
  bad.inputs[1].dtype = DType::kFloat16;
  s = Load(PlainPackagePath("block"), bad).status();
  CHECK_THAT(s.message(), Catch::Contains("'mask' has dtype float16, the package takes float32"));

  // A zoo package's metadata signature is checked the same way.
  Signature zoo;
  zoo.inputs = {TensorSpec{"features", DType::kFloat32, {-1, 15}}};
  zoo.outputs = {TensorSpec{"out", DType::kFloat32, {-1, 8}}};
  s = Load(PackagePath("mlp"), zoo).status();
  CHECK_THAT(s.message(), Catch::Contains("dim 1 is 15, the package fixes it to 16"));
  zoo.inputs[0].shape = {-1, 16};
  auto renamed = Load(PackagePath("mlp"), zoo);
  REQUIRE(renamed.ok());
  CHECK((*renamed)->signature().inputs[0].name == "features");
}
