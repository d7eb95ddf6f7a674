// ParseWrapperSource / DeriveSignature on excerpts of generated wrapper
// source (the line forms torch 2.13 emits; the real packages are covered in
// package_description_test.cc).
#include <catch2/catch.hpp>

#include "package/package_signature.h"
#include "package/wrapper_source.h"

using namespace pt2serve;

namespace {

// Two inputs sharing both dims (s31 batch, s27 seq), a tuple of two outputs,
// one parameter and one folded constant.
constexpr char kSource[] = R"cpp(
    inputs_info_[0].name = "arg9_1";
    inputs_info_[1].name = "arg10_1";
    constants_info_[0].name = "emb_weight";
    constants_info_[0].dtype = cached_torch_dtype_float32;
    constants_info_[0].data_size = 3200;
    constants_info_[0].from_folded = false;
    constants_info_[0].type = static_cast<int32_t>(torch::aot_inductor::ConstantType::Parameter);
    constants_info_[0].shape = {50, 16};
    constants_info_[0].original_fqn = "emb.weight";
    constants_info_[1].name = "_FOLDED_CONST_x";
    constants_info_[1].dtype = cached_torch_dtype_bfloat16;
    constants_info_[1].data_size = 32;
    constants_info_[1].from_folded = true;
    constants_info_[1].type = static_cast<int32_t>(torch::aot_inductor::ConstantType::FoldedConstant);
    constants_info_[1].shape = {16};
    in_spec_ = R"([1, {"type": "builtins.tuple", "context": "null", "children_spec": [{"type": "builtins.tuple", "context": "null", "children_spec": [{"type": null, "context": null, "children_spec": []}]}, {"type": "builtins.dict", "context": "[\"mask\"]", "children_spec": [{"type": null, "context": null, "children_spec": []}]}]}])";
    out_spec_ = R"([1, {"type": "builtins.tuple", "context": "null", "children_spec": [{"type": null, "context": null, "children_spec": []}, {"type": null, "context": null, "children_spec": []}]}])";
    outputs_info_[0].name = "output0";
    outputs_info_[1].name = "output1";
        std::cerr << "[WARNING] Calling constant_folding in model, but compiled with config: "
                  << "aot_inductor.use_runtime_constant_folding=False\n";
AOTI_NOINLINE static void check_input_0(
    AtenTensorHandle* input_handles
) {
    int32_t arg9_1_expected_dtype = aoti_torch_dtype_int64();
    if (arg9_1_size[0] < 2) {
    if (arg9_1_size[0] > 64) {
    if (arg9_1_size[1] < 2) {
    if (arg9_1_size[1] > 32) {
}
AOTI_NOINLINE static void check_input_1(
    AtenTensorHandle* input_handles
) {
    int32_t arg10_1_expected_dtype = aoti_torch_dtype_float32();
    if (arg10_1_size[0] < 2) {
    if (arg10_1_size[0] > 64) {
    if (arg10_1_size[1] < 3) {
    if (arg10_1_size[1] > 32) {
    if (16 != arg10_1_size[2]) {
}
    if (_check_aoti_runtime_check_inputs_env()) { assert_size_stride(arg9_1, {s31, s27}, {s27, 1L}, "input"); }
    if (_check_aoti_runtime_check_inputs_env()) { assert_size_stride(buf7, {s31, 2L}, {2L, 1L}, "torch.ops.aten.mm.default"); }
    if (_check_aoti_runtime_check_inputs_env()) { assert_size_stride(arg10_1, {s31, s27, 16L}, {16L*s27, 16L, 1L}, "input"); }
)cpp";

}  // namespace

TEST_CASE("wrapper source: inputs, outputs, call spec and constants", "[package]") {
  auto facts = ParseWrapperSource(kSource);
  REQUIRE(facts.ok());
  REQUIRE(facts->inputs.size() == 2);
  CHECK(facts->inputs[0].placeholder == "arg9_1");
  CHECK(facts->inputs[0].dtype == DType::kInt64);
  CHECK(facts->inputs[0].dim_exprs == std::vector<std::string>{"s31", "s27"});
  CHECK(facts->inputs[1].dim_exprs == std::vector<std::string>{"s31", "s27", "16"});
  CHECK(facts->inputs[1].min.at(1) == 3);
  CHECK(facts->inputs[1].fixed.at(2) == 16);
  CHECK(facts->output_names == std::vector<std::string>{"output0", "output1"});
  CHECK_FALSE(facts->runtime_constant_folding);
  REQUIRE(facts->constants.size() == 2);
  CHECK(facts->constants[0].fqn == "emb.weight");
  CHECK(facts->constants[0].shape == Shape{50, 16});
  CHECK(facts->constants[0].nbytes == 3200);
  CHECK(facts->constants[0].type == "Parameter");
  CHECK(facts->constants[1].dtype == DType::kBFloat16);
  CHECK(facts->constants[1].from_folded);
  CHECK(facts->constants[1].type == "FoldedConstant");
}

TEST_CASE("derived signature: names, ranges, shared dims, batch", "[package]") {
  auto facts = ParseWrapperSource(kSource);
  REQUIRE(facts.ok());
  auto derived = DeriveSignature(*facts);
  REQUIRE(derived.ok());
  const Signature& sig = derived->signature;
  REQUIRE(sig.inputs.size() == 2);
  CHECK(sig.inputs[0].name == "input__0");  // positional: no name in the package
  CHECK(sig.inputs[1].name == "mask");      // keyword: its key
  CHECK(sig.inputs[0].shape == Shape{-1, -1});
  CHECK(sig.inputs[1].shape == Shape{-1, -1, 16});
  CHECK(sig.inputs[0].dims[0].min == 1);  // recorded >= 2 accepts 1
  CHECK(sig.inputs[0].dims[0].max == 64);
  CHECK(sig.inputs[1].dims[1].min == 3);
  CHECK(sig.inputs[0].dims[1].symbol == "s27");
  CHECK(sig.inputs[1].dims[1].symbol == "s27");
  CHECK(sig.max_batch_size == 64);
  REQUIRE(sig.outputs.size() == 2);
  CHECK(sig.outputs[0].name == "output__0");
  CHECK_FALSE(derived->outputs_known);
}

TEST_CASE("derived signature: dict outputs keep their keys", "[package]") {
  WrapperFacts facts;
  facts.inputs.push_back(WrapperInput{"arg0_1", DType::kFloat32, {"4", "16"}, true, {}, {}, {}});
  facts.output_names = {"output0", "output1"};
  facts.out_spec =
      R"([1, {"type": "builtins.dict", "context": "[\"y\", \"norm\"]", "children_spec": [)"
      R"({"type": null, "context": null, "children_spec": []}, )"
      R"({"type": null, "context": null, "children_spec": []}]}])";
  auto derived = DeriveSignature(facts);
  REQUIRE(derived.ok());
  CHECK(derived->signature.outputs[0].name == "y");
  CHECK(derived->signature.outputs[1].name == "norm");
  CHECK(derived->signature.inputs[0].shape == Shape{4, 16});
  CHECK(derived->signature.max_batch_size == 0);  // static: not batched
}

TEST_CASE("wrapper source: garbage and missing dtypes are errors", "[package]") {
  CHECK_FALSE(ParseWrapperSource("int main() { return 0; }\n").ok());
  WrapperFacts facts;
  facts.inputs.push_back(WrapperInput{"arg0_1", std::nullopt, {"4"}, true, {}, {}, {}});
  facts.output_names = {"output0"};
  auto derived = DeriveSignature(facts);
  REQUIRE_FALSE(derived.ok());
  CHECK_THAT(derived.status().message(), Catch::Contains("dtype of input 0"));
}

TEST_CASE("declared signature is checked against the package", "[package]") {
  auto facts = ParseWrapperSource(kSource);
  REQUIRE(facts.ok());
  auto derived = DeriveSignature(*facts);
  REQUIRE(derived.ok());
  Signature declared;
  declared.inputs = {TensorSpec{"tokens", DType::kInt64, {-1, -1}, {}},
                     TensorSpec{"mask", DType::kFloat32, {-1, -1, 16}, {}}};
  declared.outputs = {TensorSpec{"a", DType::kFloat32, {-1}, {}},
                      TensorSpec{"b", DType::kFloat32, {-1}, {}}};
  auto ok = ReconcileDeclared(declared, *derived);
  REQUIRE(ok.ok());
  CHECK(ok->inputs[0].name == "tokens");
  CHECK(ok->inputs[0].dims[0].max == 64);  // ranges come from the package
  CHECK(ok->max_batch_size == 64);

  auto bad = declared;
  bad.inputs[0].dtype = DType::kInt32;
  CHECK_THAT(ReconcileDeclared(bad, *derived).status().message(),
             Catch::Contains("'tokens' has dtype int32, the package takes int64"));
  bad = declared;
  bad.inputs[1].shape = {-1, -1, 8};
  CHECK_THAT(ReconcileDeclared(bad, *derived).status().message(),
             Catch::Contains("dim 2 is 8, the package fixes it to 16"));
  bad = declared;
  bad.inputs.pop_back();
  CHECK_THAT(ReconcileDeclared(bad, *derived).status().message(),
             Catch::Contains("1 inputs, the package takes 2"));
  bad = declared;
  bad.inputs[0].dims = {DimRange{1, 128, ""}, DimRange{}};
  CHECK_THAT(ReconcileDeclared(bad, *derived).status().message(),
             Catch::Contains("wider than the package's (1..64)"));
  auto narrow = declared;
  narrow.inputs[0].dims = {DimRange{0, 8, ""}, DimRange{}};
  auto narrowed_dims = ReconcileDeclared(narrow, *derived);
  REQUIRE(narrowed_dims.ok());
  CHECK(narrowed_dims->inputs[0].dims[0].min == 1);  // unset bound: the package's
  CHECK(narrowed_dims->inputs[0].dims[0].max == 8);
  CHECK(narrowed_dims->inputs[0].dims[1].max == 32);
  CHECK(narrowed_dims->inputs[0].dims[1].symbol == "s27");
  bad = declared;
  bad.max_batch_size = 100;
  CHECK_THAT(ReconcileDeclared(bad, *derived).status().message(),
             Catch::Contains("exceeds the package's bound 64"));
  bad = declared;
  bad.max_batch_size = 8;
  auto narrowed = ReconcileDeclared(bad, *derived);
  REQUIRE(narrowed.ok());
  CHECK(narrowed->max_batch_size == 8);
}
