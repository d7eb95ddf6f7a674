// DescribePackage on real packages: plain aoti_compile_and_package output
// (tests/support/plain_packages.py), a pt2serve-exported zoo package, and
// broken files.
#include <catch2/catch.hpp>

#include "package/package_description.h"
#include "tests/support/test_models.h"

using namespace pt2serve;
using pt2serve::testing::FixturePath;
using pt2serve::testing::PackagePath;
using pt2serve::testing::PlainPackagePath;

TEST_CASE("plain transformer block: signature derived from the package", "[package]") {
  auto desc = DescribePackage(PlainPackagePath("block"));
  REQUIRE(desc.ok());
  CHECK(desc->source == SignatureSource::kDerived);
  CHECK_FALSE(desc->outputs_known);
  CHECK(desc->files.metadata.at("AOTI_DEVICE_KEY") == "cpu");
  const Signature& sig = desc->signature;
  REQUIRE(sig.inputs.size() == 2);
  CHECK(sig.inputs[0].name == "input__0");
  CHECK(sig.inputs[0].dtype == DType::kInt64);
  CHECK(sig.inputs[1].name == "input__1");
  CHECK(sig.inputs[1].dtype == DType::kFloat32);
  for (const TensorSpec& in : sig.inputs) {
    CHECK(in.shape == Shape{-1, -1});
    REQUIRE(in.dims.size() == 2);
    CHECK(in.dims[0].min == 1);
    CHECK(in.dims[0].max == 64);
    CHECK(in.dims[1].min == 1);
    CHECK(in.dims[1].max == 32);
  }
  // tokens and mask share batch and sequence length.
  CHECK(!sig.inputs[0].dims[1].symbol.empty());
  CHECK(sig.inputs[0].dims[1].symbol == sig.inputs[1].dims[1].symbol);
  CHECK(sig.inputs[0].dims[0].symbol == sig.inputs[1].dims[0].symbol);
  CHECK(sig.max_batch_size == 64);
  CHECK(sig.outputs.size() == 3);
  REQUIRE(desc->wrapper);
  CHECK_FALSE(desc->wrapper->runtime_constant_folding);
  CHECK(desc->wrapper->constants.size() == 8);
}

TEST_CASE("plain static mlp: keyword input name, dict output keys", "[package]") {
  auto desc = DescribePackage(PlainPackagePath("mlp"));
  REQUIRE(desc.ok());
  const Signature& sig = desc->signature;
  REQUIRE(sig.inputs.size() == 1);
  CHECK(sig.inputs[0].name == "x");
  CHECK(sig.inputs[0].shape == Shape{4, 16});
  CHECK(sig.max_batch_size == 0);
  REQUIRE(sig.outputs.size() == 2);
  CHECK(sig.outputs[0].name == "y");
  CHECK(sig.outputs[1].name == "norm");
  REQUIRE(desc->wrapper);
  std::vector<std::string> fqns;
  for (const auto& c : desc->wrapper->constants) fqns.push_back(c.fqn);
  // fc2.bias was folded into the generated code at compile time.
  CHECK(fqns == std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight"});
}

TEST_CASE("pt2serve-exported package: signature from its metadata", "[package]") {
  auto desc = DescribePackage(PackagePath("two_io"));
  REQUIRE(desc.ok());
  CHECK(desc->source == SignatureSource::kMetadata);
  CHECK(desc->outputs_known);
  CHECK(desc->signature.inputs[1].name == "ids");
  REQUIRE(desc->wrapper);
  CHECK(desc->wrapper->runtime_constant_folding);
}

TEST_CASE("describe: missing, non-zip and truncated packages are clear errors", "[package]") {
  auto missing = DescribePackage("/nonexistent/x.pt2");
  CHECK(missing.status().code() == StatusCode::kNotFound);
  auto not_zip = DescribePackage(FixturePath("not_a_zip.pt2"));
  CHECK(not_zip.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(not_zip.status().message(), Catch::Contains("not a .pt2 package"));
  auto corrupt = DescribePackage(FixturePath("corrupt.pt2"));
  CHECK_FALSE(corrupt.ok());
}

TEST_CASE("describe: a package whose entry fails its CRC check is refused", "[package]") {
  auto bad = DescribePackage(FixturePath("bad_crc.pt2"));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(bad.status().message(), Catch::Contains("wrapper.cpp is corrupt"));
  CHECK_THAT(bad.status().message(), Catch::Contains("CRC"));
}
