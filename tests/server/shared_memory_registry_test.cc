#include "server/shared_memory_registry.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

#include "common/limits.h"
#include "server/tensor_codec.h"

using namespace pt2serve;
using namespace pt2serve::server;

namespace {

// A POSIX shared memory object as a client creates it (shm_open + ftruncate
// + mmap); unlinked and unmapped at the end of the test.
class ClientObject {
 public:
  explicit ClientObject(size_t size, const std::string& tag = "obj")
      : key_("/pt2serve_test_" + tag + "_" + std::to_string(getpid())), size_(size) {
    shm_unlink(key_.c_str());
    fd_ = shm_open(key_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    REQUIRE(fd_ >= 0);
    REQUIRE(ftruncate(fd_, static_cast<off_t>(size)) == 0);
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    REQUIRE(p != MAP_FAILED);
    data_ = static_cast<std::byte*>(p);
  }
  ~ClientObject() {
    munmap(data_, size_);
    close(fd_);
    shm_unlink(key_.c_str());
  }
  const std::string& key() const { return key_; }
  std::byte* data() const { return data_; }
  void Truncate(size_t size) { REQUIRE(ftruncate(fd_, static_cast<off_t>(size)) == 0); }

 private:
  std::string key_;
  size_t size_;
  int fd_ = -1;
  std::byte* data_ = nullptr;
};

void AddShmParameters(google::protobuf::Map<std::string, inference::InferParameter>& params,
                      const std::string& region, int64_t byte_size, int64_t offset) {
  params["shared_memory_region"].set_string_param(region);
  params["shared_memory_byte_size"].set_int64_param(byte_size);
  if (offset != 0) params["shared_memory_offset"].set_int64_param(offset);
}

}  // namespace

TEST_CASE("shared memory regions register, list and unregister like Triton's", "[shm]") {
  ClientObject obj(4096);
  SharedMemoryRegistry registry(kMaxSharedMemoryRegions);
  REQUIRE(registry.Register("in", obj.key(), 0, 4096).ok());
  REQUIRE(registry.Register("tail", obj.key(), 1000, 96).ok());
  CHECK(registry.Register("in", obj.key(), 0, 16).code() == StatusCode::kAlreadyExists);

  auto all = registry.List("");
  REQUIRE(all.ok());
  REQUIRE(all->size() == 2);
  CHECK((*all)[1].name == "tail");
  CHECK((*all)[1].key == obj.key());
  CHECK((*all)[1].offset == 1000);
  CHECK((*all)[1].byte_size == 96);
  CHECK(registry.List("tail")->size() == 1);
  CHECK(registry.List("nope").status().code() == StatusCode::kNotFound);

  CHECK(registry.Unregister("in") == 1);
  CHECK(registry.Unregister("in") == 0);  // unknown names are not an error
  CHECK(registry.size() == 1);
  REQUIRE(registry.Register("in", obj.key(), 0, 4096).ok());
  CHECK(registry.Unregister("") == 2);
  CHECK(registry.size() == 0);
}

TEST_CASE("bad registrations are refused with the right code", "[shm]") {
  ClientObject obj(4096);
  SharedMemoryRegistry registry(2);
  auto code = [&](const std::string& name, const std::string& key, uint64_t offset,
                  uint64_t size) { return registry.Register(name, key, offset, size).code(); };
  CHECK(code("r", "/pt2serve_test_no_such_object", 0, 16) == StatusCode::kNotFound);
  CHECK(code("r", "a/b", 0, 16) == StatusCode::kInvalidArgument);
  CHECK(code("r", "/", 0, 16) == StatusCode::kInvalidArgument);
  CHECK(code("r", "", 0, 16) == StatusCode::kInvalidArgument);
  CHECK(code("r", "/" + std::string(300, 'k'), 0, 16) == StatusCode::kInvalidArgument);
  CHECK(code("", obj.key(), 0, 16) == StatusCode::kInvalidArgument);
  CHECK(code(std::string(kMaxSharedMemoryNameBytes + 1, 'n'), obj.key(), 0, 16) ==
        StatusCode::kInvalidArgument);
  CHECK(code("r", obj.key(), 0, 0) == StatusCode::kInvalidArgument);
  const Status past_end = registry.Register("r", obj.key(), 4000, 200);
  CHECK(past_end.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(past_end.message(), Catch::Contains("offset 4000 + byte_size 200 exceeds the "
                                                 "object's 4096 bytes"));
  CHECK(code("r", obj.key(), UINT64_MAX, 2) == StatusCode::kInvalidArgument);
  CHECK(code("r", obj.key(), 1, UINT64_MAX) == StatusCode::kInvalidArgument);
  CHECK(registry.size() == 0);

  REQUIRE(registry.Register("a", obj.key(), 0, 16).ok());
  REQUIRE(registry.Register("b", obj.key(), 0, 16).ok());
  CHECK(code("c", obj.key(), 0, 16) == StatusCode::kResourceExhausted);
}

TEST_CASE("spans are bounds-checked and share memory with the client", "[shm]") {
  ClientObject obj(8192);
  SharedMemoryRegistry registry(kMaxSharedMemoryRegions);
  REQUIRE(registry.Register("r", obj.key(), 4096, 1024).ok());  // object bytes 4096..5119

  std::memcpy(obj.data() + 4096 + 8, "client", 6);
  auto span = registry.Span("input 'x'", "r", 8, 6);
  REQUIRE(span.ok());
  CHECK(std::memcmp(span->data, "client", 6) == 0);
  std::memcpy(span->data, "server", 6);
  CHECK(std::memcmp(obj.data() + 4096 + 8, "server", 6) == 0);

  CHECK(registry.Span("input 'x'", "r", 0, 1024).ok());
  const Status past = registry.Span("input 'x'", "r", 1000, 32).status();
  CHECK(past.code() == StatusCode::kInvalidArgument);
  CHECK(past.message() ==
        "input 'x': offset 1000 + byte_size 32 exceeds shared memory region 'r''s 1024 bytes");
  CHECK(registry.Span("x", "r", UINT64_MAX, 1).status().code() == StatusCode::kInvalidArgument);
  CHECK(registry.Span("x", "r", 1, UINT64_MAX).status().code() == StatusCode::kInvalidArgument);
  const Status unknown = registry.Span("output 'y'", "nope", 0, 4).status();
  CHECK(unknown.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(unknown.message(), Catch::Contains("'nope' is not registered"));

  // A span keeps its mapping after the region is unregistered.
  registry.Unregister("r");
  CHECK(std::memcmp(span->data, "server", 6) == 0);
  CHECK(registry.Span("x", "r", 0, 4).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a shrunk object is refused, and an access past its end does not crash", "[shm]") {
  ClientObject obj(3 * 4096, "shrink");
  SharedMemoryRegistry registry(kMaxSharedMemoryRegions);
  REQUIRE(registry.Register("r", obj.key(), 0, 3 * 4096).ok());
  auto span = registry.Span("input 'x'", "r", 0, 3 * 4096);
  REQUIRE(span.ok());
  obj.Truncate(4096);

  const Status later = registry.Span("input 'x'", "r", 0, 3 * 4096).status();
  CHECK(later.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(later.message(), Catch::Contains("was shrunk"));
  CHECK_FALSE(span->region->Lost());

  // Without the guard this read is a SIGBUS; with it the mapping turns into
  // zero pages and the region reports itself lost.
  const volatile std::byte* past_end = span->data + 2 * 4096 + 5;
  CHECK(*past_end == std::byte{0});
  CHECK(span->region->Lost());
  CHECK_THAT(span->region->CheckIntact().message(), Catch::Contains("truncated while in use"));
  span->data[2 * 4096] = std::byte{7};  // writes land in the private pages
  CHECK(registry.Span("x", "r", 0, 16).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("KServe inputs and outputs in shared memory", "[shm][codec]") {
  ClientObject obj(4096, "codec");
  SharedMemoryRegistry registry(kMaxSharedMemoryRegions);
  REQUIRE(registry.Register("in", obj.key(), 0, 1024).ok());
  REQUIRE(registry.Register("out", obj.key(), 1024, 64).ok());
  const float x[4] = {1, 2, 3, 4};
  std::memcpy(obj.data() + 64, x, sizeof(x));

  inference::ModelInferRequest request;
  auto* shm_in = request.add_inputs();
  shm_in->set_name("x");
  shm_in->set_datatype("FP32");
  shm_in->add_shape(4);
  AddShmParameters(*shm_in->mutable_parameters(), "in", 16, 64);
  auto* raw_in = request.add_inputs();
  raw_in->set_name("ids");
  raw_in->set_datatype("INT64");
  raw_in->add_shape(1);
  const int64_t id = 9;
  // One raw entry: for the one input that is not in shared memory.
  request.add_raw_input_contents()->assign(reinterpret_cast<const char*>(&id), sizeof(id));
  auto* out = request.add_outputs();
  out->set_name("y");
  AddShmParameters(*out->mutable_parameters(), "out", 64, 0);
  request.add_outputs()->set_name("z");

  SECTION("decoded without a copy, outputs written into the region") {
    SharedMemoryUse use;
    auto tensors = DecodeKServeInputs(request, &registry, &use);
    REQUIRE(tensors.ok());
    REQUIRE(tensors->size() == 2);
    CHECK((*tensors)[0].data == registry.Span("x", "in", 64, 16)->data);  // the region's bytes
    CHECK((*tensors)[0].nbytes == 16);
    CHECK((*tensors)[0].As<float>()[3] == 4.0f);
    const float changed = 9.0f;  // a client write shows through: no copy was made
    std::memcpy(obj.data() + 64 + 12, &changed, sizeof(changed));
    CHECK((*tensors)[0].As<float>()[3] == 9.0f);
    CHECK((*tensors)[0].owner != nullptr);
    CHECK((*tensors)[1].As<int64_t>()[0] == 9);
    CHECK(use.input_regions.size() == 1);
    REQUIRE(CheckKServeOutputs(request, &registry, &use).ok());
    REQUIRE(use.outputs.size() == 1);

    const double y[2] = {0.5, -1.5};
    const int32_t z[1] = {42};
    std::vector<Tensor> results = {Tensor::Copy("y", DType::kFloat64, {2}, y, sizeof(y)),
                                   Tensor::Copy("z", DType::kInt32, {1}, z, sizeof(z))};
    inference::ModelInferResponse response;
    REQUIRE(EncodeKServeOutputs(results, use, response).ok());
    CHECK(std::memcmp(obj.data() + 1024, y, sizeof(y)) == 0);
    REQUIRE(response.outputs_size() == 2);
    const auto& params = response.outputs(0).parameters();
    CHECK(params.at("shared_memory_region").string_param() == "out");
    CHECK(params.at("shared_memory_byte_size").int64_param() == 16);
    CHECK(response.outputs(0).shape_size() == 1);
    // One raw entry per output (Triton's clients index them): empty for the shm one.
    REQUIRE(response.raw_output_contents_size() == 2);
    CHECK(response.raw_output_contents(0).empty());
    CHECK(response.raw_output_contents(1).size() == 4);
  }

  SECTION("an output larger than its shared_memory_byte_size names both sizes") {
    SharedMemoryUse use;
    REQUIRE(CheckKServeOutputs(request, &registry, &use).ok());
    std::vector<double> big(16, 1.0);
    std::vector<Tensor> results = {Tensor::FromVector("y", DType::kFloat64, {16}, big)};
    inference::ModelInferResponse response;
    const Status s = EncodeKServeOutputs(results, use, response);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.message() ==
          "output 'y' is 128 bytes but its shared_memory_byte_size is 64 (shared memory region "
          "'out')");
  }

  SECTION("an unaligned input is copied, not read in place") {
    (*shm_in->mutable_parameters())["shared_memory_offset"].set_int64_param(66);
    std::memcpy(obj.data() + 66, x, sizeof(x));
    SharedMemoryUse use;
    auto tensors = DecodeKServeInputs(request, &registry, &use);
    REQUIRE(tensors.ok());
    CHECK((*tensors)[0].data != registry.Span("x", "in", 66, 16)->data);
    CHECK((*tensors)[0].As<float>()[3] == 4.0f);
  }

  SECTION("malformed shared-memory parameters") {
    auto error = [&](inference::ModelInferRequest r) {
      SharedMemoryUse use;
      auto decoded = DecodeKServeInputs(r, &registry, &use);
      REQUIRE_FALSE(decoded.ok());
      CHECK(decoded.status().code() == StatusCode::kInvalidArgument);
      return decoded.status().message();
    };
    auto r = request;
    r.mutable_inputs(0)->mutable_parameters()->erase("shared_memory_byte_size");
    CHECK_THAT(error(r), Catch::Contains("'shared_memory_byte_size' is required"));
    r = request;
    (*r.mutable_inputs(0)->mutable_parameters())["shared_memory_offset"].set_int64_param(-8);
    CHECK_THAT(error(r), Catch::Contains("'shared_memory_offset' must be an integer >= 0"));
    r = request;
    (*r.mutable_inputs(0)->mutable_parameters())["shared_memory_region"].set_int64_param(1);
    CHECK_THAT(error(r), Catch::Contains("'shared_memory_region' must be a string"));
    r = request;
    (*r.mutable_inputs(0)->mutable_parameters())["shared_memory_region"].set_string_param("zz");
    CHECK_THAT(error(r), Catch::Contains("input 'x': shared memory region 'zz' is not registered"));
    r = request;
    (*r.mutable_inputs(0)->mutable_parameters())["shared_memory_byte_size"].set_int64_param(4096);
    CHECK_THAT(error(r), Catch::Contains("exceeds shared memory region 'in''s 1024 bytes"));
    r = request;
    r.mutable_inputs(0)->mutable_parameters()->erase("shared_memory_region");
    CHECK_THAT(error(r), Catch::Contains("needs shared_memory_region"));
    r = request;
    r.add_raw_input_contents()->assign(16, '\0');
    CHECK_THAT(error(r), Catch::Contains("2 entries but the request has 1 inputs outside shared "
                                         "memory"));
    r = request;
    r.mutable_inputs(0)->mutable_contents()->add_fp32_contents(1.0f);
    CHECK_THAT(error(r), Catch::Contains("sets contents although its data is in shared memory"));
    r = request;
    (*r.mutable_inputs(0)->mutable_parameters())["shared_memory_bogus"].set_int64_param(1);
    CHECK_THAT(error(r), Catch::Contains("parameter 'shared_memory_bogus' is not supported"));
  }

  SECTION("with the extension off, shared-memory parameters say how to enable it") {
    auto decoded = DecodeKServeInputs(request);
    REQUIRE_FALSE(decoded.ok());
    CHECK(decoded.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(decoded.status().message(),
               Catch::Contains("parameter 'shared_memory_") &&
                   Catch::Contains("is not supported (system shared memory is off on this "
                                   "server: enable it with server.shared_memory: system"));
    CHECK_THAT(CheckKServeOutputs(request).message(),
               Catch::Contains("requested output 'y': parameter 'shared_memory_"));
  }
}
