#include "server/tensor_codec.h"

#include <catch2/catch.hpp>
#include <cstring>

#include "common/limits.h"
#include "server/status_mapping.h"

using namespace pt2serve;
using namespace pt2serve::server;

TEST_CASE("every DType has KServe, Triton and native names that round-trip", "[codec]") {
  for (DType d : {DType::kBool, DType::kUInt8, DType::kInt8, DType::kInt16, DType::kInt32,
                  DType::kInt64, DType::kFloat16, DType::kBFloat16, DType::kFloat32,
                  DType::kFloat64}) {
    CHECK(*DTypeFromKServe(KServeDatatype(d)) == d);
    CHECK(*FromProtoDType(ToProtoDType(d)) == d);
    CHECK(TritonDataType(d) != inference::TYPE_INVALID);
  }
  CHECK(KServeDatatype(DType::kBFloat16) == "BF16");
  CHECK(DTypeFromKServe("BYTES").status().code() == StatusCode::kInvalidArgument);
  CHECK(FromProtoDType(pt2serve::v1::DT_INVALID).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("KServe raw inputs are decoded without copying", "[codec]") {
  inference::ModelInferRequest request;
  auto* in = request.add_inputs();
  in->set_name("x");
  in->set_datatype("FP32");
  in->add_shape(1);
  in->add_shape(2);
  float values[2] = {1.5f, -2.0f};
  request.add_raw_input_contents()->assign(reinterpret_cast<char*>(values), sizeof(values));
  auto tensors = DecodeKServeInputs(request);
  REQUIRE(tensors.ok());
  REQUIRE(tensors->size() == 1);
  const Tensor& t = (*tensors)[0];
  CHECK(t.shape == Shape{1, 2});
  CHECK(t.dtype == DType::kFloat32);
  CHECK(t.nbytes == 8);
  CHECK(static_cast<const void*>(t.data) == request.raw_input_contents(0).data());
}

TEST_CASE("KServe typed contents are packed to the datatype's width", "[codec]") {
  inference::ModelInferRequest request;
  auto* ids = request.add_inputs();
  ids->set_name("ids");
  ids->set_datatype("INT64");
  ids->add_shape(3);
  for (int64_t v : {4, 5, 6}) ids->mutable_contents()->add_int64_contents(v);
  auto* small = request.add_inputs();
  small->set_name("s");
  small->set_datatype("INT16");
  small->add_shape(2);
  for (int v : {-3, 7}) small->mutable_contents()->add_int_contents(v);
  auto tensors = DecodeKServeInputs(request);
  REQUIRE(tensors.ok());
  CHECK((*tensors)[0].As<int64_t>()[2] == 6);
  CHECK((*tensors)[1].nbytes == 4);
  CHECK((*tensors)[1].As<int16_t>()[0] == -3);
}

TEST_CASE("malformed KServe inputs are INVALID_ARGUMENT naming the input", "[codec]") {
  inference::ModelInferRequest request;
  auto* in = request.add_inputs();
  in->set_name("x");
  in->set_datatype("FP16");
  in->add_shape(1);
  SECTION("FP16 needs raw contents") {
    in->mutable_contents()->add_fp32_contents(1.0f);
    auto r = DecodeKServeInputs(request);
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::Contains("raw_input_contents"));
  }
  SECTION("raw count must match inputs") {
    request.add_raw_input_contents("ab");
    request.add_raw_input_contents("cd");
    CHECK_THAT(DecodeKServeInputs(request).status().message(), Catch::Contains("2 entries"));
  }
  SECTION("negative dims") {
    in->set_shape(0, -1);
    request.add_raw_input_contents("ab");
    CHECK_THAT(DecodeKServeInputs(request).status().message(),
               Catch::Contains("negative dimension"));
  }
  SECTION("unknown datatype") {
    in->set_datatype("COMPLEX");
    CHECK_THAT(DecodeKServeInputs(request).status().message(),
               Catch::Contains("input 'x': unsupported datatype 'COMPLEX'"));
  }
}

TEST_CASE("outputs are encoded as raw contents in order", "[codec]") {
  auto a = Tensor::FromVector<float>("a", DType::kFloat32, {2}, {1.0f, 2.0f});
  auto b = Tensor::FromVector<int64_t>("b", DType::kInt64, {1}, {9});
  inference::ModelInferResponse response;
  EncodeKServeOutputs({a, b}, response);
  REQUIRE(response.outputs_size() == 2);
  CHECK(response.outputs(1).datatype() == "INT64");
  CHECK(response.raw_output_contents(0).size() == 8);
  int64_t v = 0;
  std::memcpy(&v, response.raw_output_contents(1).data(), 8);
  CHECK(v == 9);

  pt2serve::v1::Tensor native;
  EncodeTensor(a, native);
  CHECK(native.dtype() == pt2serve::v1::DT_FLOAT32);
  CHECK(native.data().size() == 8);
}

TEST_CASE("Status maps onto the same gRPC code", "[codec]") {
  CHECK(ToGrpcStatus(Status::Ok()).ok());
  auto s = ToGrpcStatus(ResourceExhausted("queue full"));
  CHECK(s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(s.error_message() == "queue full");
  CHECK(ToGrpcStatus(Unauthenticated("x")).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(ToGrpcStatus(DeadlineExceeded("x")).error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
}

namespace {
inference::ModelInferRequest TypedRequest() {
  inference::ModelInferRequest request;
  auto* in = request.add_inputs();
  in->set_name("x");
  in->set_datatype("FP32");
  in->add_shape(2);
  in->mutable_contents()->add_fp32_contents(1.0f);
  in->mutable_contents()->add_fp32_contents(2.0f);
  return request;
}

std::string DecodeError(const inference::ModelInferRequest& request) {
  auto decoded = DecodeKServeInputs(request);
  if (decoded.ok()) return "decoded";
  CHECK(decoded.status().code() == StatusCode::kInvalidArgument);
  return decoded.status().message();
}
}  // namespace

TEST_CASE("typed contents in two fields, or the wrong field, are refused", "[codec]") {
  REQUIRE(DecodeKServeInputs(TypedRequest()).ok());
  auto two = TypedRequest();
  two.mutable_inputs(0)->mutable_contents()->add_int_contents(3);
  CHECK(DecodeError(two) == "input 'x' sets both int_contents and fp32_contents; a tensor's "
                            "values go in one field");
  auto wrong = TypedRequest();
  wrong.mutable_inputs(0)->mutable_contents()->clear_fp32_contents();
  wrong.mutable_inputs(0)->mutable_contents()->add_int64_contents(1);
  CHECK(DecodeError(wrong) == "input 'x' is FP32 but sets int64_contents (want fp32_contents)");
  auto raw_too = TypedRequest();
  raw_too.add_raw_input_contents()->assign(8, '\0');
  CHECK_THAT(DecodeError(raw_too), Catch::Contains("sets contents although raw_input_contents"));
}

TEST_CASE("tensor parameters (shared memory, classification) are refused", "[codec]") {
  auto shm = TypedRequest();
  (*shm.mutable_inputs(0)->mutable_parameters())["shared_memory_region"].set_string_param("r");
  CHECK_THAT(DecodeError(shm), Catch::Contains("parameter 'shared_memory_region' is not supported"));
  auto cls = TypedRequest();
  auto* out = cls.add_outputs();
  out->set_name("y");
  (*out->mutable_parameters())["classification"].set_int64_param(3);
  REQUIRE(DecodeKServeInputs(cls).ok());
  auto checked = CheckKServeOutputs(cls);
  CHECK(checked.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(checked.message(), Catch::Contains("requested output 'y': parameter 'classification'"));
}

TEST_CASE("shapes of more than 32 dims are refused before they are echoed", "[codec]") {
  auto deep = TypedRequest();
  for (int i = 0; i < 40; ++i) deep.mutable_inputs(0)->add_shape(1);
  CHECK(DecodeError(deep) == "input 'x': shape has 41 dims (at most 32)");
}

TEST_CASE("long status messages are cut before they reach a client", "[codec]") {
  const grpc::Status st = ToGrpcStatus(InvalidArgument(std::string(1 << 20, 'n')));
  CHECK(st.error_message().size() <= kMaxClientMessageBytes);
  CHECK_THAT(st.error_message(), Catch::EndsWith("(truncated)"));
}
