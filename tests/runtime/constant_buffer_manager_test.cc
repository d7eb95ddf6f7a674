#include "runtime/constant_buffer_manager.h"
#include "runtime/upload_session.h"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cctype>
#include <fstream>
#include <future>
#include <map>
#include <thread>

#include "common/safetensors.h"
#include "common/sha256.h"
#include "devices/device_staging.h"
#include "runtime/model.h"
#include "tests/support/hot_swap_race.h"
#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::testing;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<Model> LoadMlp(size_t runners = 1) {
  ModelConfig config;
  config.name = "mlp";
  config.path = PackagePath("mlp");
  config.num_runners = runners;
  auto model = Model::Load(config);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return *model;
}

// input.x / output.y of a reference file written by the exporter.
Reference ReferenceFile(const std::string& path) {
  Reference ref = LoadReferenceFile(path);
  REQUIRE(ref.inputs.size() == 1);
  REQUIRE(ref.outputs.size() == 1);
  return ref;
}

std::vector<Tensor> WeightsFile(const std::string& file) {
  auto weights = SafetensorsFile::Open(FixturePath(file));
  INFO(weights.status().ToString());
  REQUIRE(weights.ok());
  return weights->tensors;
}

std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

StageOptions Version(std::string version) {
  StageOptions options;
  options.version = std::move(version);
  return options;
}

// Compiled vs eager: the outputs agree to float rounding.
constexpr double kTol = 1e-5;

// Runs the reference input and checks output and reported version.
void ExpectServes(Model& model, const Reference& ref, const std::string& version) {
  InferRequest request;
  request.inputs = ref.inputs;
  auto response = model.Infer(request);
  INFO(response.status().ToString());
  REQUIRE(response.ok());
  CHECK(response->weights_version == version);
  REQUIRE(response->outputs.size() == 1);
  INFO("weights " << version);
  CHECK(CompareTensors(response->outputs[0], ref.outputs[0], kTol, kTol) == "");
}

void ExpectError(const Status& status, StatusCode code, const std::string& fragment) {
  INFO(status.ToString());
  CHECK(status.code() == code);
  CHECK_THAT(status.message(), Catch::Contains(fragment));
}

template <typename T>
void ExpectError(const StatusOr<T>& result, StatusCode code, const std::string& fragment) {
  REQUIRE_FALSE(result.ok());
  ExpectError(result.status(), code, fragment);
}

// Announced specs of a weight set, in the order given.
std::vector<TensorSpec> SpecsOf(const std::vector<Tensor>& tensors) {
  std::vector<TensorSpec> specs;
  for (const Tensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  return specs;
}

std::vector<Tensor> SortedByName(std::vector<Tensor> tensors) {
  std::sort(tensors.begin(), tensors.end(),
            [](const Tensor& a, const Tensor& b) { return a.name < b.name; });
  return tensors;
}


}  // namespace

TEST_CASE("SHA-256 matches the FIPS 180-4 vectors in any chunking", "[constant_buffer][sha256]") {
  CHECK(Sha256::HexOf("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(Sha256::HexOf("abc") ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  CHECK(Sha256::HexOf(two_blocks) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(Sha256::HexOf("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklm"
                      "nopqklmnopqrlmnopqrsmnopqrstnopqrstu") ==
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  const std::string million(1'000'000, 'a');
  CHECK(Sha256::HexOf(million) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Every split of the padding boundary cases gives the same digest.
  for (size_t len : {55, 56, 63, 64, 65, 119, 120, 128}) {
    const std::string msg(len, 'x');
    const std::string whole = Sha256::HexOf(msg);
    for (size_t chunk : {1, 3, 7, 63, 64, 65}) {
      Sha256 h;
      for (size_t i = 0; i < msg.size(); i += chunk) {
        h.Update(msg.data() + i, std::min(chunk, msg.size() - i));
      }
      CHECK(h.FinishHex() == whole);
    }
  }
  CHECK(Sha256::IsHexDigest(std::string(64, 'A')));
  CHECK_FALSE(Sha256::IsHexDigest(std::string(63, 'a')));
  CHECK_FALSE(Sha256::IsHexDigest(std::string(64, 'g')));
}

TEST_CASE("stage, swap, rollback twice, free, and stage again", "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const Reference initial = LoadReference("mlp");
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  const Reference seed8 = ReferenceFile(FixturePath("mlp.seed8.reference.safetensors"));
  // The weight sets give clearly different outputs, so a mix-up cannot pass.
  REQUIRE(CompareTensors(seed7.outputs[0], initial.outputs[0], 1e-2, 1e-2) != "");
  REQUIRE(CompareTensors(seed7.outputs[0], seed8.outputs[0], 1e-2, 1e-2) != "");

  BufferStatus s = weights.status();
  CHECK(s.active.version == "initial");
  CHECK(s.active.bytes == model->info().constants_nbytes);
  CHECK(s.inactive_state == InactiveState::kEmpty);
  CHECK(s.bytes_in_use == s.active.bytes);
  ExpectServes(*model, initial, "initial");

  // Nothing staged, nothing to roll back to.
  ExpectError(weights.Swap(), StatusCode::kFailedPrecondition, "no weights are staged");
  ExpectError(weights.Rollback(), StatusCode::kFailedPrecondition, "no previous weights retained");

  StageOptions options = Version("seed7");
  options.source = "fixture";
  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), options).ok());
  s = weights.status();
  CHECK(s.inactive_state == InactiveState::kStaged);
  CHECK(s.inactive.version == "seed7");
  CHECK(s.inactive.source == "fixture");
  CHECK(s.bytes_in_use == 2 * model->info().constants_nbytes);
  ExpectServes(*model, initial, "initial");  // staging does not change what is served

  ExpectError(weights.Swap("seed8"), StatusCode::kFailedPrecondition, "'seed7' staged, not 'seed8'");
  auto swapped = weights.Swap("seed7");
  INFO(swapped.status().ToString());
  REQUIRE(swapped.ok());
  CHECK(swapped->active_version == "seed7");
  CHECK(swapped->previous_version == "initial");
  CHECK(model->weights_version() == "seed7");
  ExpectServes(*model, seed7, "seed7");
  s = weights.status();
  CHECK(s.active.version == "seed7");
  CHECK(s.inactive_state == InactiveState::kPrevious);
  CHECK(s.inactive.version == "initial");
  ExpectError(weights.Swap(), StatusCode::kFailedPrecondition, "Rollback restores them");

  auto back = weights.Rollback();
  REQUIRE(back.ok());
  CHECK(back->active_version == "initial");
  CHECK(back->previous_version == "seed7");
  ExpectServes(*model, initial, "initial");

  auto forward = weights.Rollback();  // rollback of the rollback
  REQUIRE(forward.ok());
  CHECK(forward->active_version == "seed7");
  ExpectServes(*model, seed7, "seed7");

  auto freed = weights.FreeInactive();
  REQUIRE(freed.ok());
  CHECK(*freed == model->info().constants_nbytes);
  s = weights.status();
  CHECK(s.inactive_state == InactiveState::kEmpty);
  CHECK(s.bytes_in_use == s.active.bytes);  // back to the active weights only
  ExpectError(weights.Rollback(), StatusCode::kFailedPrecondition, "no previous weights retained");
  ExpectServes(*model, seed7, "seed7");  // freeing the inactive side keeps serving
  auto freed_again = weights.FreeInactive();
  REQUIRE(freed_again.ok());
  CHECK(*freed_again == 0);

  // A fresh buffer after the free works like the first one.
  REQUIRE(weights.StageFromFile(FixturePath("mlp.seed8.weights.safetensors"), Version("seed8")).ok());
  CHECK(weights.status().inactive.source == FixturePath("mlp.seed8.weights.safetensors"));
  REQUIRE(weights.Swap().ok());
  ExpectServes(*model, seed8, "seed8");
  REQUIRE(weights.Rollback().ok());
  ExpectServes(*model, seed7, "seed7");
}

TEST_CASE("staging over a staged set replaces it, over the previous set discards it",
          "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const Reference seed8 = ReferenceFile(FixturePath("mlp.seed8.reference.safetensors"));

  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), Version("seed7")).ok());
  REQUIRE(weights.Stage(WeightsFile("mlp.seed8.weights.safetensors"), Version("seed8")).ok());
  CHECK(weights.status().inactive.version == "seed8");
  REQUIRE(weights.Swap().ok());
  ExpectServes(*model, seed8, "seed8");
  CHECK(weights.status().inactive.version == "initial");

  // Staging overwrites the previous set: no rollback to "initial" any more.
  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), Version("seed7")).ok());
  ExpectError(weights.Rollback(), StatusCode::kFailedPrecondition, "holds the staged weights 'seed7'");
  ExpectServes(*model, seed8, "seed8");
}

TEST_CASE("bad weight sets are rejected with every problem named and serving untouched",
          "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const Reference initial = LoadReference("mlp");

  auto stage = [&](const std::string& file) {
    return weights.StageFromFile(FixturePath(file), Version("bad"));
  };
  SECTION("wrong dtype") {
    ExpectError(stage("mlp.bad_dtype.weights.safetensors"), StatusCode::kInvalidArgument,
                "1 problem with the weights for model 'mlp': 'fc1.bias' has dtype float16, "
                "expected float32");
  }
  SECTION("wrong shape") {
    ExpectError(stage("mlp.bad_shape.weights.safetensors"), StatusCode::kInvalidArgument,
                "'fc1.weight' has shape [64, 15], expected [64, 16]");
  }
  SECTION("missing tensor") {
    ExpectError(stage("mlp.missing.weights.safetensors"), StatusCode::kInvalidArgument,
                "1 problem with the weights for model 'mlp': missing 'fc2.bias'");
  }
  SECTION("unknown tensor") {
    ExpectError(stage("mlp.unknown.weights.safetensors"), StatusCode::kInvalidArgument,
                "unknown 'foo'");
  }
  SECTION("everything wrong at once: all problems in one message") {
    ExpectError(stage("mlp.all_wrong.weights.safetensors"), StatusCode::kInvalidArgument,
                "4 problems with the weights for model 'mlp': missing 'fc2.bias'; ");
    Status s = stage("mlp.all_wrong.weights.safetensors");
    for (const char* fragment : {"'fc1.bias' has dtype float16, expected float32",
                                 "'fc1.weight' has shape [64, 15], expected [64, 16]",
                                 "unknown 'foo'"}) {
      CHECK_THAT(s.message(), Catch::Contains(fragment));
    }
  }
  SECTION("duplicates, short data and a missing version label") {
    std::vector<Tensor> tensors = SortedByName(WeightsFile("mlp.seed7.weights.safetensors"));
    tensors.push_back(tensors[0]);  // fc1.bias twice
    for (Tensor& t : tensors) {
      if (t.name == "fc2.weight") t.nbytes -= 4;
    }
    Status s = weights.Stage(tensors, StageOptions{});
    ExpectError(s, StatusCode::kInvalidArgument, "3 problems");
    CHECK_THAT(s.message(), Catch::Contains("no version label given"));
    CHECK_THAT(s.message(), Catch::Contains("'" + tensors[0].name + "' given 2 times"));
    CHECK_THAT(s.message(), Catch::Contains("'fc2.weight' has 2044 bytes of data, expected 2048"));
  }
  SECTION("missing file, malformed and wrong checksums") {
    ExpectError(stage("nope.safetensors"), StatusCode::kNotFound, "nope.safetensors");
    StageOptions options = Version("seed7");
    options.sha256 = "xyz";
    ExpectError(weights.StageFromFile(FixturePath("mlp.seed7.weights.safetensors"), options),
                StatusCode::kInvalidArgument, "sha256 'xyz' is not 64 hex digits");
    options.sha256 = std::string(64, '0');
    ExpectError(weights.StageFromFile(FixturePath("mlp.seed7.weights.safetensors"), options),
                StatusCode::kDataLoss, "checksum mismatch: expected 0000");
  }
  BufferStatus s = weights.status();
  CHECK(s.active.version == "initial");
  CHECK(s.inactive_state == InactiveState::kEmpty);
  CHECK(s.bytes_in_use == s.active.bytes);
  ExpectServes(*model, initial, "initial");
  CHECK(weights.Swap().status().code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("a file checksum that matches is accepted and recorded", "[constant_buffer]") {
  auto model = LoadMlp();
  StageOptions options = Version("seed7");
  const std::string sha = ReadLine(FixturePath("mlp.seed7.weights.sha256"));
  REQUIRE(sha.size() == 64);
  std::string upper = sha;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  options.sha256 = upper;
  REQUIRE(model->weights().StageFromFile(FixturePath("mlp.seed7.weights.safetensors"), options).ok());
  CHECK(model->weights().status().inactive.sha256 == sha);
}

// The path accelerator models take (there into pinned memory): the file's
// tensors are copied into staging memory in the same pass that hashes the
// file, nothing is written before the digest matched, and the copies are
// released (and uncharged) when the push ends.
TEST_CASE("a server-side file staged through copies made while it is hashed",
          "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  weights.CopyFileTensorsForTest();
  const Reference initial = LoadReference("mlp");
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  const std::string file = FixturePath("mlp.seed7.weights.safetensors");
  StageOptions options = Version("seed7");
  options.sha256 = ReadLine(FixturePath("mlp.seed7.weights.sha256"));
  REQUIRE(weights.StageFromFile(file, options).ok());
  BufferStatus s = weights.status();
  CHECK(s.upload_bytes == 0);  // the copies are gone
  CHECK_FALSE(s.last_push.pinned_staging);  // ordinary memory for a CPU model
  CHECK(s.last_push.written_bytes == model->info().constants_nbytes);
  // Reserved: the copies (W) on top of the inactive buffer.
  CHECK(s.last_push.staging_bytes ==
        model->info().constants_nbytes + model->info().blob_nbytes + model->info().folded_nbytes);
  REQUIRE(weights.Swap().ok());
  ExpectServes(*model, seed7, "seed7");

  // A digest that does not match: DATA_LOSS, and the rollback target (the
  // package's weights, PREVIOUS now) is untouched.
  options.version = "bad";
  options.sha256 = std::string(64, 'a');
  ExpectError(weights.StageFromFile(file, options), StatusCode::kDataLoss, "checksum mismatch");
  s = weights.status();
  CHECK(s.inactive_state == InactiveState::kPrevious);
  CHECK(s.inactive.version == "initial");
  CHECK(s.upload_bytes == 0);
  ExpectServes(*model, seed7, "seed7");
  REQUIRE(weights.Rollback().ok());
  ExpectServes(*model, initial, "initial");
}

// The path of a model on one accelerator (there through pinned memory to a
// transient copy on the GPU), here with the CPU as the "device": the set is
// moved while it is read or received, written into the inactive buffer only
// once complete and its digest matched, and the ring and transient copy are
// gone (and uncharged) when the push ends, whatever its outcome.
TEST_CASE("pushes staged through a transient copy on the device", "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  weights.DeviceStagingForTest();
  const Reference initial = LoadReference("mlp");
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  const size_t w = model->info().constants_nbytes;
  const size_t buffer = model->info().blob_nbytes + model->info().folded_nbytes;
  auto expect_clean = [&](InactiveState state, const std::string& inactive_version) {
    BufferStatus s = weights.status();
    CHECK(s.upload_bytes == 0);
    CHECK(s.inactive_state == state);
    CHECK(s.inactive.version == inactive_version);
  };

  SECTION("a server-side file") {
    const std::string file = FixturePath("mlp.seed7.weights.safetensors");
    StageOptions options = Version("seed7");
    options.sha256 = ReadLine(FixturePath("mlp.seed7.weights.sha256"));
    REQUIRE(weights.StageFromFile(file, options).ok());
    BufferStatus s = weights.status();
    CHECK(s.last_push.device_staged);
    CHECK(s.device_upload_bytes == 0);
    CHECK(s.last_push.written_bytes == w);
    // Reserved: the ring (sized to the small set), the transient copy (W)
    // and the inactive buffer.
    CHECK(DeviceStaging::RingBytes(w) == w);
    CHECK(s.last_push.staging_bytes == DeviceStaging::RingBytes(w) + w + buffer);
    CHECK(s.last_push.device_copy_bytes == w);
    expect_clean(InactiveState::kStaged, "seed7");
    REQUIRE(weights.Swap().ok());
    ExpectServes(*model, seed7, "seed7");

    // A digest that does not match: DATA_LOSS, the rollback target is intact.
    options.version = "bad";
    options.sha256 = std::string(64, 'a');
    ExpectError(weights.StageFromFile(file, options), StatusCode::kDataLoss, "checksum mismatch");
    expect_clean(InactiveState::kPrevious, "initial");
    // A file that is not this model's weight set is refused before any copy.
    options.sha256.clear();
    ExpectError(weights.StageFromFile(FixturePath("mlp.bad_shape.weights.safetensors"), options),
                StatusCode::kInvalidArgument, "model 'mlp'");
    expect_clean(InactiveState::kPrevious, "initial");
    ExpectServes(*model, seed7, "seed7");
    REQUIRE(weights.Rollback().ok());
    ExpectServes(*model, initial, "initial");
  }
  SECTION("uploads") {
    const std::vector<Tensor> tensors =
        SortedByName(WeightsFile("mlp.seed7.weights.safetensors"));
    const std::string data_sha = ReadLine(FixturePath("mlp.seed7.data.sha256"));
    auto begin = [&](std::string version, std::string sha) {
      StageOptions options = Version(std::move(version));
      options.sha256 = std::move(sha);
      auto session = weights.BeginUpload(SpecsOf(tensors), options);
      INFO(session.status().ToString());
      REQUIRE(session.ok());
      return std::move(session).value();
    };
    auto send = [&](UploadSession& session, size_t count) {  // the first `count` tensors
      for (size_t i = 0; i < count; ++i) {
        const Tensor& t = tensors[i];
        const size_t half = t.nbytes / 2;  // two chunks (the digest is in arrival order)
        REQUIRE(session.Write(t.name, 0, t.data, half).ok());
        REQUIRE(session.Write(t.name, half, t.data + half, t.nbytes - half).ok());
      }
    };
    {
      auto session = begin("seed7-upload", data_sha);
      BufferStatus during = weights.status();
      CHECK(during.upload_bytes == w + DeviceStaging::RingBytes(w));
      CHECK(during.device_upload_bytes == w);  // the transient copy, reported and charged
      CHECK(during.staging_bytes == DeviceStaging::RingBytes(w) + 2 * w + buffer);
      send(*session, tensors.size());
      REQUIRE(session->Commit().ok());
    }
    CHECK(weights.status().device_upload_bytes == 0);
    CHECK(weights.status().staging_bytes == buffer);  // the staged set only
    CHECK(weights.status().last_push.device_staged);
    CHECK(weights.status().last_push.device_copy_bytes == w);
    expect_clean(InactiveState::kStaged, "seed7-upload");
    REQUIRE(weights.Swap("seed7-upload").ok());
    ExpectServes(*model, seed7, "seed7-upload");

    {  // a client that goes away after some tensors went to the device
      auto session = begin("abandoned", "");
      send(*session, 2);
    }
    expect_clean(InactiveState::kPrevious, "initial");
    {
      auto session = begin("bad", std::string(64, 'b'));
      send(*session, tensors.size());
      ExpectError(session->Commit(), StatusCode::kDataLoss, "checksum mismatch");
    }
    expect_clean(InactiveState::kPrevious, "initial");
    ExpectServes(*model, seed7, "seed7-upload");
    REQUIRE(weights.Rollback().ok());
    ExpectServes(*model, initial, "initial");
  }
}

TEST_CASE("a failed stage drops the staged set but keeps the rollback target",
          "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const Reference initial = LoadReference("mlp");

  REQUIRE(weights.Stage(WeightsFile("mlp.seed8.weights.safetensors"), Version("seed8")).ok());
  CHECK_FALSE(weights.StageFromFile(FixturePath("mlp.missing.weights.safetensors"), Version("x")).ok());
  BufferStatus s = weights.status();
  CHECK(s.inactive_state == InactiveState::kEmpty);  // seed8 must not go live by accident
  CHECK(s.bytes_in_use == s.active.bytes);           // and its memory is back
  ExpectError(weights.Swap(), StatusCode::kFailedPrecondition, "no weights are staged");

  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), Version("seed7")).ok());
  REQUIRE(weights.Swap().ok());
  CHECK_FALSE(weights.StageFromFile(FixturePath("mlp.bad_shape.weights.safetensors"), Version("x")).ok());
  CHECK(weights.status().inactive_state == InactiveState::kPrevious);  // nothing was written
  REQUIRE(weights.Rollback().ok());
  ExpectServes(*model, initial, "initial");
}

TEST_CASE("upload sessions: chunks in any order, checksum, and every error path",
          "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const Reference initial = LoadReference("mlp");
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  const std::vector<Tensor> tensors = SortedByName(WeightsFile("mlp.seed7.weights.safetensors"));
  const std::string data_sha = ReadLine(FixturePath("mlp.seed7.data.sha256"));

  auto begin = [&](std::string sha = "") {
    StageOptions options = Version("seed7-upload");
    options.sha256 = std::move(sha);
    auto session = weights.BeginUpload(SpecsOf(tensors), options);
    INFO(session.status().ToString());
    REQUIRE(session.ok());
    return std::move(session).value();
  };
  // Sends each tensor in `chunk`-byte pieces, tensors in FQN order.
  auto send_all = [&](UploadSession& session, size_t chunk) {
    for (const Tensor& t : tensors) {
      for (size_t off = 0; off < t.nbytes; off += chunk) {
        REQUIRE(session.Write(t.name, off, t.data + off, std::min(chunk, t.nbytes - off)).ok());
      }
    }
  };

  SECTION("in-order upload with the checksum computed independently (hashlib)") {
    auto session = begin(data_sha);
    CHECK(session->bytes_expected() == model->info().constants_nbytes);
    send_all(*session, 100);
    CHECK(session->bytes_received() == session->bytes_expected());
    // While the session is open, it is the model's only writer.
    ExpectError(weights.Swap(), StatusCode::kFailedPrecondition,
                "another weight operation on model 'mlp' is in progress");
    REQUIRE(session->Commit().ok());
    ExpectError(session->Commit(), StatusCode::kFailedPrecondition, "already committed");
    REQUIRE(weights.Swap("seed7-upload").ok());
    ExpectServes(*model, seed7, "seed7-upload");
    CHECK(weights.status().active.sha256 == data_sha);
  }
  SECTION("chunks out of order, without a checksum") {
    auto session = begin();
    for (auto it = tensors.rbegin(); it != tensors.rend(); ++it) {
      const size_t half = it->nbytes / 2;
      REQUIRE(session->Write(it->name, half, it->data + half, it->nbytes - half).ok());
      REQUIRE(session->Write(it->name, 0, it->data, half).ok());
    }
    REQUIRE(session->Commit().ok());
    REQUIRE(weights.Swap().ok());
    ExpectServes(*model, seed7, "seed7-upload");
  }
  SECTION("bad chunks are rejected and change nothing") {
    auto session = begin(data_sha);
    const Tensor& t = tensors[0];
    ExpectError(session->Write("foo", 0, t.data, 4), StatusCode::kInvalidArgument,
                "tensor 'foo' was not announced");
    ExpectError(session->Write(t.name, t.nbytes - 2, t.data, 4), StatusCode::kInvalidArgument,
                "is outside tensor '" + t.name + "'");
    ExpectError(session->Write(t.name, UINT64_MAX, t.data, 4), StatusCode::kInvalidArgument,
                "outside");
    REQUIRE(session->Write(t.name, 0, t.data, 8).ok());
    ExpectError(session->Write(t.name, 4, t.data + 4, 8), StatusCode::kInvalidArgument,
                "bytes [4, 12) of tensor '" + t.name + "' were already written");
    CHECK(session->bytes_received() == 8);
    // The rejected chunks were neither stored nor hashed: the rest completes it.
    REQUIRE(session->Write(t.name, 8, t.data + 8, t.nbytes - 8).ok());
    for (size_t i = 1; i < tensors.size(); ++i) {
      REQUIRE(session->Write(tensors[i].name, 0, tensors[i].data, tensors[i].nbytes).ok());
    }
    REQUIRE(session->Commit().ok());
  }
  SECTION("incomplete commit names the missing bytes") {
    auto session = begin();
    REQUIRE(session->Write("fc2.bias", 0, tensors[2].data, 16).ok());
    REQUIRE(tensors[2].name == "fc2.bias");
    Status s = session->Commit();
    ExpectError(s, StatusCode::kInvalidArgument, "incomplete upload for model 'mlp'");
    CHECK_THAT(s.message(), Catch::Contains("'fc2.bias' has 16 of 32 bytes"));
    CHECK_THAT(s.message(), Catch::Contains("'fc1.weight' has 0 of 4096 bytes"));
    ExpectError(session->Write("fc2.bias", 16, tensors[2].data + 16, 16),
                StatusCode::kFailedPrecondition, "already committed");
  }
  SECTION("checksum mismatch is DATA_LOSS") {
    const std::string wrong(64, 'a');
    auto session = begin(wrong);
    send_all(*session, 1000);
    ExpectError(session->Commit(), StatusCode::kDataLoss,
                "checksum mismatch: expected " + wrong + ", got " + data_sha);
  }
  SECTION("a checksum that follows the data (hashed while the chunks arrive)") {
    StageOptions options = Version("seed7-trailer");
    options.sha256_follows = true;
    auto session = weights.BeginUpload(SpecsOf(tensors), options);
    REQUIRE(session.ok());
    send_all(**session, 333);
    ExpectError((*session)->ExpectSha256("xyz"), StatusCode::kInvalidArgument,
                "is not 64 hex digits");
    REQUIRE((*session)->ExpectSha256(data_sha).ok());
    ExpectError((*session)->ExpectSha256(data_sha), StatusCode::kInvalidArgument, "given twice");
    REQUIRE((*session)->Commit().ok());
    CHECK(weights.status().inactive.sha256 == data_sha);

    // Wrong digest: DATA_LOSS; never given: INVALID_ARGUMENT; neither stages.
    auto wrong = weights.BeginUpload(SpecsOf(tensors), options);
    REQUIRE(wrong.ok());
    send_all(**wrong, 4096);
    REQUIRE((*wrong)->ExpectSha256(std::string(64, 'b')).ok());
    ExpectError((*wrong)->Commit(), StatusCode::kDataLoss, "got " + data_sha);
    auto missing = weights.BeginUpload(SpecsOf(tensors), options);
    REQUIRE(missing.ok());
    send_all(**missing, 4096);
    ExpectError((*missing)->Commit(), StatusCode::kInvalidArgument, "never came");
    CHECK(weights.status().inactive_state == InactiveState::kEmpty);

    // Not announced, or announced next to an up-front one.
    auto plain = begin();
    ExpectError(plain->ExpectSha256(data_sha), StatusCode::kInvalidArgument, "no sha256 was");
    plain.reset();
    options.sha256 = data_sha;
    ExpectError(weights.BeginUpload(SpecsOf(tensors), options).status(),
                StatusCode::kInvalidArgument, "announced to follow");
  }
  SECTION("abandoned session stages nothing and frees the writer slot") {
    REQUIRE(weights.Stage(WeightsFile("mlp.seed8.weights.safetensors"), Version("seed8")).ok());
    {
      auto session = begin();
      REQUIRE(session->Write(tensors[0].name, 0, tensors[0].data, 4).ok());
    }  // client disconnected
    BufferStatus s = weights.status();
    CHECK(s.inactive_state == InactiveState::kStaged);  // untouched
    CHECK(s.inactive.version == "seed8");
  }
  SECTION("announced tensors are validated up front") {
    std::vector<TensorSpec> specs = SpecsOf(tensors);
    specs[0].shape = {1};
    specs.pop_back();
    specs.push_back({"foo", DType::kFloat32, {2}});
    ExpectError(weights.BeginUpload(specs, Version("v")), StatusCode::kInvalidArgument,
                "3 problems with the weights for model 'mlp': missing 'fc2.weight'; "
                "'fc1.bias' has shape [1], expected [64]; unknown 'foo'");
  }
  // Whatever happened, the model still serves correct outputs.
  InferRequest request;
  request.inputs = initial.inputs;
  auto response = model->Infer(request);
  REQUIRE(response.ok());
  const Reference& expected = response->weights_version == "initial" ? initial : seed7;
  CHECK(CompareTensors(response->outputs[0], expected.outputs[0], kTol, kTol) == "");
}

TEST_CASE("a second concurrent writer gets FAILED_PRECONDITION at once", "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const std::vector<Tensor> seed7 = WeightsFile("mlp.seed7.weights.safetensors");
  auto session = weights.BeginUpload(SpecsOf(seed7), Version("v"));
  REQUIRE(session.ok());
  const std::string busy = "another weight operation on model 'mlp' is in progress";
  ExpectError(weights.Stage(seed7, Version("x")), StatusCode::kFailedPrecondition, busy);
  ExpectError(weights.StageFromFile(FixturePath("mlp.seed7.weights.safetensors"), Version("x")),
              StatusCode::kFailedPrecondition, busy);
  ExpectError(weights.Swap(), StatusCode::kFailedPrecondition, busy);
  ExpectError(weights.Rollback(), StatusCode::kFailedPrecondition, busy);
  ExpectError(weights.FreeInactive(), StatusCode::kFailedPrecondition, busy);
  ExpectError(weights.BeginUpload(SpecsOf(seed7), Version("x")), StatusCode::kFailedPrecondition,
              busy);
  CHECK(weights.status().active.version == "initial");  // status never waits
  session->reset();
  CHECK(weights.Stage(seed7, Version("x")).ok());

  // Real threads: of many writers racing, each either wins or is told so.
  std::atomic<int> ok{0}, busy_count{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        Status s = weights.Stage(seed7, Version("t" + std::to_string(t)));
        if (s.ok()) {
          ++ok;
        } else if (s.code() == StatusCode::kFailedPrecondition &&
                   s.message().find("in progress") != std::string::npos) {
          ++busy_count;
        } else {
          ++other;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(other == 0);
  CHECK(ok + busy_count == 40);
  CHECK(ok >= 1);
  CHECK(weights.status().inactive_state == InactiveState::kStaged);
}

TEST_CASE("hot swap under load: no failed request, no torn or mislabelled result",
          "[constant_buffer][race]") {
  auto model = LoadMlp(/*runners=*/2);
  const std::map<std::string, Reference> refs = {
      {"initial", LoadReference("mlp")},
      {"seed7", ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"))},
      {"seed8", ReferenceFile(FixturePath("mlp.seed8.reference.safetensors"))},
  };
  const std::map<std::string, std::vector<Tensor>> sets = {
      {"seed7", WeightsFile("mlp.seed7.weights.safetensors")},
      {"seed8", WeightsFile("mlp.seed8.weights.safetensors")},
  };
  HotSwapRaceOptions options;  // 8 clients over 2 runners, 20 cycles
  options.tolerance = kTol;
  const HotSwapRaceResult race = RunHotSwapRace(*model, refs, sets, options);
  ExpectCleanRace(race, {"seed7", "seed8"});
  CHECK(model->pool().stats().max_in_flight <= 2);
  WARN("hot swap, 8 clients / 2 runners, 20 cycles: " << race.Summary());
}

TEST_CASE("the inactive buffer can be freed and restaged again and again", "[constant_buffer]") {
  // Regression: AOTInductor's free_inactive_constant_buffer() leaves null
  // folded-constant handles behind, and the next update crashed on them.
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  const Reference seed8 = ReferenceFile(FixturePath("mlp.seed8.reference.safetensors"));
  const auto set7 = WeightsFile("mlp.seed7.weights.safetensors");
  const auto set8 = WeightsFile("mlp.seed8.weights.safetensors");

  REQUIRE(weights.Stage(set7, Version("seed7")).ok());
  REQUIRE(weights.FreeInactive().ok());  // free a STAGED set
  REQUIRE(weights.Stage(set7, Version("seed7")).ok());
  REQUIRE(weights.Swap().ok());
  ExpectServes(*model, seed7, "seed7");
  REQUIRE(weights.FreeInactive().ok());  // free a PREVIOUS set
  // A stage that fails before writing, then one that works.
  CHECK_FALSE(weights.StageFromFile(FixturePath("mlp.missing.weights.safetensors"), Version("x")).ok());
  REQUIRE(weights.Stage(set8, Version("seed8")).ok());
  REQUIRE(weights.FreeInactive().ok());
  REQUIRE(weights.FreeInactive().ok());  // nothing left: 0 bytes, no crash
  REQUIRE(weights.Stage(set8, Version("seed8")).ok());
  REQUIRE(weights.Swap().ok());
  ExpectServes(*model, seed8, "seed8");
  REQUIRE(weights.Rollback().ok());
  ExpectServes(*model, seed7, "seed7");
}

TEST_CASE("bytes_in_use follows the inactive buffer", "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const size_t one = model->info().constants_nbytes;
  CHECK(weights.status().bytes_in_use == one);
  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), Version("seed7")).ok());
  CHECK(weights.status().bytes_in_use == 2 * one);
  REQUIRE(weights.Swap().ok());
  CHECK(weights.status().bytes_in_use == 2 * one);  // previous set retained for rollback
  auto freed = weights.FreeInactive();
  REQUIRE(freed.ok());
  CHECK(*freed == one);
  BufferStatus s = weights.status();
  CHECK(s.bytes_in_use == s.active.bytes);
  CHECK(s.inactive.bytes == 0);
  CHECK(s.active.version == "seed7");
}

TEST_CASE("Swap is a compare-and-swap that is safe to retry", "[constant_buffer]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const Reference initial = LoadReference("mlp");
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), Version("seed7")).ok());

  // The active version is not the one the caller saw: nothing changes.
  ExpectError(weights.Swap("seed7", "other"), StatusCode::kFailedPrecondition,
              "'initial' active, expected 'other'");
  CHECK(weights.status().inactive_state == InactiveState::kStaged);
  ExpectServes(*model, initial, "initial");

  auto swapped = weights.Swap("seed7", "initial");
  REQUIRE(swapped.ok());
  CHECK_FALSE(swapped->already_active);
  CHECK(swapped->active_version == "seed7");
  ExpectServes(*model, seed7, "seed7");

  // A retried commit (its reply was lost): succeeds, does not flip back to 'initial'.
  for (const char* expected_active : {"initial", "", "seed7"}) {
    auto again = weights.Swap("seed7", expected_active);
    REQUIRE(again.ok());
    CHECK(again->already_active);
    CHECK(again->active_version == "seed7");
    CHECK(again->previous_version == "initial");
    ExpectServes(*model, seed7, "seed7");
  }
  CHECK(weights.status().inactive_state == InactiveState::kPrevious);
  // Without a version there is nothing to compare: the old rule (nothing staged) applies.
  ExpectError(weights.Swap(), StatusCode::kFailedPrecondition, "Rollback restores them");
}

namespace {

// Holds runner slots of `model` with gated work submitted straight to its
// pool (as long-running requests would), until Release().
struct RunnerHold {
  RunnerHold(Model& model, size_t runners) : submitted(static_cast<int>(runners)) {
    for (size_t i = 0; i < runners; ++i) {
      model.pool().Submit([this](size_t) { return opened.wait(), Status::Ok(); },
                          kNoDeadline, [this](const Status&, const RequestTiming&) { ++done; });
    }
    while (model.pool().stats().in_flight < runners) std::this_thread::sleep_for(1ms);
  }
  // The held work refers to this object: it must have finished (its
  // completion ran) before the members go (TSan found the pool's threads
  // still inside opened.wait() while the promise was destroyed).
  ~RunnerHold() {
    Release();
    while (done.load() < submitted) std::this_thread::sleep_for(1ms);
  }
  void Release() {
    if (!released.exchange(true)) gate.set_value();
  }
  const int submitted;
  std::promise<void> gate;
  std::shared_future<void> opened = gate.get_future().share();
  std::atomic<bool> released{false};
  std::atomic<int> done{0};
};

}  // namespace

TEST_CASE("a push while the request queue is full waits for a runner instead of failing",
          "[constant_buffer][issue14]") {
  ModelConfig config;
  config.name = "mlp";
  config.path = PackagePath("mlp");
  config.max_queue_size = 0;  // requests never wait; staging must not be affected
  auto loaded = Model::Load(config);
  REQUIRE(loaded.ok());
  Model& model = **loaded;
  ConstantBufferManager& weights = model.weights();
  const Reference initial = LoadReference("mlp");
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), Version("seed7")).ok());
  REQUIRE(weights.Swap().ok());  // PREVIOUS = initial

  RunnerHold hold(model, 1);
  std::promise<Status> staged;
  // Read here: WeightsFile REQUIREs, and Catch2 assertions are for the test's
  // own thread only (TSan found the race).
  const std::vector<Tensor> seed8 = WeightsFile("mlp.seed8.weights.safetensors");
  std::thread pusher([&] { staged.set_value(weights.Stage(seed8, Version("seed8"))); });
  auto result = staged.get_future();
  // The fold waits for the runner (it is busy) rather than being refused.
  CHECK(result.wait_for(200ms) == std::future_status::timeout);
  hold.Release();
  const Status status = result.get();
  pusher.join();
  INFO(status.ToString());
  CHECK(status.ok());
  REQUIRE(weights.Swap().ok());
  REQUIRE(weights.Rollback().ok());  // the rollback target survived
  ExpectServes(model, seed7, "seed7");
}

TEST_CASE("a swap that cannot drain in time is DEADLINE_EXCEEDED and changes nothing",
          "[constant_buffer][issue14]") {
  auto model = LoadMlp(2);
  ConstantBufferManager& weights = model->weights();
  weights.set_drain_timeout(100ms);
  const Reference initial = LoadReference("mlp");
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), Version("seed7")).ok());
  {
    RunnerHold hung(*model, 1);  // an inference that does not return
    const auto start = std::chrono::steady_clock::now();
    auto swapped = weights.Swap();
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    REQUIRE_FALSE(swapped.ok());
    ExpectError(swapped.status(), StatusCode::kDeadlineExceeded, "still serving 'initial'");
    // Still serving the old weights on the free runner, the staged set kept.
    ExpectServes(*model, initial, "initial");
    CHECK(weights.status().inactive_state == InactiveState::kStaged);
  }
  REQUIRE(weights.Swap().ok());
  ExpectServes(*model, seed7, "seed7");
}

TEST_CASE("a swap step that fails leaves every replica on the old weights and label",
          "[constant_buffer][issue14]") {
  auto model = LoadMlp();
  ConstantBufferManager& weights = model->weights();
  const Reference initial = LoadReference("mlp");
  const Reference seed7 = ReferenceFile(FixturePath("mlp.seed7.reference.safetensors"));
  REQUIRE(weights.Stage(WeightsFile("mlp.seed7.weights.safetensors"), Version("seed7")).ok());
  std::atomic<bool> fail{true};
  weights.SetFaultHookForTest([&](std::string_view op, size_t) {
    return op == "swap" && fail ? Internal("injected swap failure") : Status::Ok();
  });
  auto swapped = weights.Swap();
  REQUIRE_FALSE(swapped.ok());
  ExpectError(swapped.status(), StatusCode::kInternal, "injected swap failure");
  ExpectServes(*model, initial, "initial");
  CHECK(weights.status().inactive_state == InactiveState::kStaged);
  fail = false;  // a retry completes the swap (and does not flip anything back)
  REQUIRE(weights.Swap().ok());
  ExpectServes(*model, seed7, "seed7");
  REQUIRE(weights.Swap("seed7").ok());  // CAS retry of the done swap: no flip
  ExpectServes(*model, seed7, "seed7");
}
