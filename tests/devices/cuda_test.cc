// CUDA tests, run on the CUDA host by scripts/cuda_host_check.sh:
//   PT2SERVE_CUDA_MODEL_DIR=<zoo exported with --device cuda> cuda_test
// PT2SERVE_MODEL_DIR / PT2SERVE_FIXTURE_DIR as for the other tests (the
// fixture weight sets are device-independent safetensors files).
#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>

#include "common/safetensors.h"
#include "common/sha256.h"
#include "devices/device_executor.h"
#include "devices/device_memory.h"
#include "devices/device_staging.h"
#include "devices/staging_memory.h"
#include "devices/tensor_convert.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/model.h"
#include "runtime/upload_session.h"
#include "tests/support/device_staging_feed.h"
#include "tests/support/hot_swap_race.h"
#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::testing;

namespace {

// GPU kernels reassociate sums differently from the CPU eager reference.
constexpr double kRtol = 1e-3;
constexpr double kAtol = 1e-4;

std::string CudaPackage(const std::string& name) {
  const char* dir = std::getenv("PT2SERVE_CUDA_MODEL_DIR");
  if (!dir || !*dir) throw std::runtime_error("PT2SERVE_CUDA_MODEL_DIR is not set");
  return std::string(dir) + "/" + name + ".pt2";
}

Reference CudaReference(const std::string& name) {
  return LoadReferenceFile(std::string(std::getenv("PT2SERVE_CUDA_MODEL_DIR")) + "/" + name +
                           ".reference.safetensors");
}

Reference FixtureReference(const std::string& file) { return LoadReferenceFile(FixturePath(file)); }

std::shared_ptr<Model> LoadCuda(const std::string& name, size_t runners,
                                const std::string& device = "cuda:0") {
  ModelConfig config;
  config.name = name;
  config.path = CudaPackage(name);
  config.device = device;
  config.num_runners = runners;
  config.max_queue_size = 1024;
  auto model = Model::Load(config);
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return *model;
}

std::string Mismatch(const InferResponse& response, const Model& model, const Reference& ref,
                     double rtol, double atol) {
  for (const Tensor& expected : ref.outputs) {
    const int idx = model.signature().OutputIndex(expected.name);
    if (idx < 0) return "no output " + expected.name;
    auto diff = CompareTensors(response.outputs[idx], expected, rtol, atol);
    if (!diff.empty()) return expected.name + ": " + diff;
  }
  return "";
}

// `threads` callers send `requests_each` requests each; all must succeed and
// match the reference.
void ExpectAllCorrect(Model& model, const Reference& ref, int threads, int requests_each) {
  std::atomic<int> failed{0}, wrong{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = 0; i < requests_each; ++i) {
        auto r = model.Infer({"", ref.inputs, {}, kNoDeadline});
        if (!r.ok()) ++failed;
        else if (!Mismatch(*r, model, ref, kRtol, kAtol).empty()) ++wrong;
      }
    });
  }
  for (auto& t : pool) t.join();
  CHECK(failed == 0);
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("this host has a CUDA device", "[cuda]") {
  REQUIRE(at::hasCUDA());
  REQUIRE(CheckHostSupports({DeviceKind::kCuda, 0}).ok());
}

TEST_CASE("every CUDA zoo package matches its eager reference", "[cuda]") {
  for (const char* name : {"mlp", "cnn", "two_io", "half"}) {
    INFO(name);
    auto model = LoadCuda(name, 1);
    CHECK(model->info().device_key == "cuda");
    CHECK(model->info().device.ToString() == "cuda:0");
    Reference ref = CudaReference(name);
    auto response = model->Infer({"", ref.inputs, {}, kNoDeadline});
    INFO(response.status().ToString());
    REQUIRE(response.ok());
    const bool half = std::string(name) == "half";
    CHECK(Mismatch(*response, *model, ref, half ? 1e-2 : kRtol, half ? 1e-2 : kAtol) == "");
  }
}

TEST_CASE("each runner gets its own CUDA stream", "[cuda]") {
  std::set<void*> streams;
  std::vector<std::unique_ptr<DeviceExecutor>> executors;
  for (int i = 0; i < 4; ++i) {
    auto executor = DeviceExecutor::Create({DeviceKind::kCuda, 0});
    REQUIRE(executor.ok());
    REQUIRE((*executor)->stream_handle() != nullptr);
    streams.insert((*executor)->stream_handle());
    executors.push_back(std::move(executor).value());
  }
  CHECK(streams.size() == 4);
}

TEST_CASE("16 threads over 4 stream runners: all results correct", "[cuda]") {
  auto model = LoadCuda("cnn", 4);
  Reference ref = CudaReference("cnn");
  ExpectAllCorrect(*model, ref, /*threads=*/16, /*requests_each=*/200);
  CHECK(model->pool().stats().max_in_flight == 4);
  CHECK(model->pool().stats().completed == 3200);
}

TEST_CASE("CUDA hot swap under load: no failed, torn or mislabelled response", "[cuda]") {
  auto model = LoadCuda("mlp", 2);
  const std::map<std::string, Reference> refs = {
      {"initial", CudaReference("mlp")},
      {"seed7", FixtureReference("mlp.seed7.reference.safetensors")},
      {"seed8", FixtureReference("mlp.seed8.reference.safetensors")},
  };
  auto weights = [](const std::string& file) {
    auto f = SafetensorsFile::Open(FixturePath(file));
    if (!f.ok()) throw std::runtime_error(f.status().ToString());
    return f->tensors;
  };
  const std::map<std::string, std::vector<Tensor>> sets = {
      {"seed7", weights("mlp.seed7.weights.safetensors")},
      {"seed8", weights("mlp.seed8.weights.safetensors")},
  };
  HotSwapRaceOptions options;  // 8 clients over 2 runners, 20 cycles
  options.tolerance = kRtol;
  const HotSwapRaceResult race = RunHotSwapRace(*model, refs, sets, options);
  ExpectCleanRace(race, {"seed7", "seed8"});
  WARN("CUDA hot swap, 8 clients / 2 runners, 20 cycles: " << race.Summary());
}

// Issue 14: staging (update + constant fold) is queued on the device's default
// stream, which the runners' non-blocking streams do not wait for. Here the
// staging thread's default stream is kept busy (~100 ms of matmuls queued just
// before the fold), so a fold that is merely queued when Stage() returns is
// still pending when the request after the swap runs on its runner stream: it
// would read the previous set's folded constants. Two weight sets whose folded
// BatchNorm constants differ tell which set a response was computed with:
//   A: all zero (running_var 1)         -> every output 0
//   B: zero but bn.bias = 1, fc.weight = 1, running_var 1
//      -> BN gives 1, ReLU 1, pooling 1, fc sums 8 ones -> every output 8
TEST_CASE("a request right after a swap sees the staged set's folded constants", "[cuda]") {
  auto model = LoadCuda("cnn", 2);
  auto make_set = [&](bool b) {
    std::vector<Tensor> set;
    for (const ConstantInfo& c : model->info().constants) {
      REQUIRE(c.dtype == DType::kFloat32);
      int64_t n = 1;
      for (int64_t d : c.shape) n *= d;
      float value = 0;
      if (c.fqn == "bn.running_var") value = 1;
      if (b && (c.fqn == "bn.bias" || c.fqn == "fc.weight")) value = 1;
      set.push_back(Tensor::FromVector(c.fqn, DType::kFloat32, c.shape,
                                       std::vector<float>(static_cast<size_t>(n), value)));
    }
    return set;
  };
  const std::vector<Tensor> set_a = make_set(false), set_b = make_set(true);
  at::Tensor busy = at::ones({4096, 4096}, at::TensorOptions().device(c10::kCUDA, 0));
  ConstantBufferManager& weights = model->weights();
  weights.SetFaultHookForTest([&](std::string_view op, size_t) {
    if (op == "fold") {
      for (int i = 0; i < 40; ++i) busy = at::mm(busy, busy).div_(4096.0f);  // queued, async
    }
    return Status::Ok();
  });
  const Reference ref = CudaReference("cnn");
  int stale = 0;
  for (int cycle = 0; cycle < 6; ++cycle) {
    const bool b = cycle % 2 == 1;
    StageOptions options;
    options.version = b ? "B" : "A";
    REQUIRE(weights.Stage(b ? set_b : set_a, options).ok());
    REQUIRE(weights.Swap().ok());
    auto response = model->Infer({"", ref.inputs, {}, kNoDeadline});
    REQUIRE(response.ok());
    CHECK(response->weights_version == options.version);
    for (double v : ToDoubles(response->outputs.at(0))) {
      if (std::abs(v - (b ? 8.0 : 0.0)) > 1e-3) {
        ++stale;
        break;
      }
    }
  }
  weights.SetFaultHookForTest(nullptr);
  CHECK(stale == 0);
}

// Issue 11: weights reach a CUDA model through pinned host memory (the DMA
// engine reads it at bus speed), a server-side file is hashed while it is
// copied there, and a checksum mismatch writes nothing (PREVIOUS survives).
TEST_CASE("CUDA staging goes through pinned memory; a bad file checksum changes nothing",
          "[cuda][staging]") {
  auto cuda = AllocateStagingMemory({DeviceSpec{DeviceKind::kCuda, 0}}, 1 << 20);
  REQUIRE(cuda.ok());
  CHECK(cuda->pinned);
  CHECK(StagingFootprint({DeviceSpec{DeviceKind::kCuda, 0}}, 1000) == 1024);  // power-of-two blocks
  auto host = AllocateStagingMemory({DeviceSpec{}}, 1 << 20);
  REQUIRE(host.ok());
  CHECK_FALSE(host->pinned);

  auto model = LoadCuda("mlp", 1);
  ConstantBufferManager& weights = model->weights();
  const Reference initial = CudaReference("mlp");
  const Reference seed7 = FixtureReference("mlp.seed7.reference.safetensors");
  const std::string seed7_file = FixturePath("mlp.seed7.weights.safetensors");
  auto seed7_sha = Sha256::HexOfFile(seed7_file);
  REQUIRE(seed7_sha.ok());
  auto expect = [&](const Reference& ref, const std::string& version) {
    auto r = model->Infer({"", ref.inputs, {}, kNoDeadline});
    REQUIRE(r.ok());
    CHECK(r->weights_version == version);
    CHECK(Mismatch(*r, *model, ref, kRtol, kAtol).empty());
  };

  StageOptions options;
  options.version = "seed7-file";
  options.sha256 = *seed7_sha;
  Status staged = weights.StageFromFile(seed7_file, options);
  INFO(staged.ToString());
  REQUIRE(staged.ok());
  const PushMemory push = weights.status().last_push;
  CHECK(push.pinned_staging);
  CHECK(push.device_staged);  // one replica on one GPU: through a transient device copy
  CHECK(push.transfer_time.count() > 0);
  CHECK(push.written_bytes == model->info().constants_nbytes);
  CHECK(push.write_time.count() > 0);
  CHECK(weights.status().upload_bytes == 0);  // the ring is gone
  REQUIRE(weights.Swap().ok());
  expect(seed7, "seed7-file");

  // The initial set is PREVIOUS now; a file whose checksum does not match
  // must leave it there (the copy to the device ran, nothing else).
  options.version = "bad";
  options.sha256 = std::string(64, '0');
  Status bad = weights.StageFromFile(seed7_file, options);
  CHECK(bad.code() == StatusCode::kDataLoss);
  CHECK(weights.status().inactive_state == InactiveState::kPrevious);
  CHECK(weights.status().upload_bytes == 0);
  REQUIRE(weights.Rollback().ok());
  expect(initial, model->config().initial_weights_version);

  // An upload's tensors go to the device as they complete. One that is
  // abandoned midway, or whose digest does not match, changes nothing.
  auto file = SafetensorsFile::Open(seed7_file);
  REQUIRE(file.ok());
  std::vector<TensorSpec> specs;
  for (const Tensor& t : file->tensors) specs.push_back({t.name, t.dtype, t.shape});
  auto upload = [&](const std::string& version, const std::string& sha, size_t count) {
    StageOptions o;
    o.version = version;
    o.sha256 = sha;
    auto session = weights.BeginUpload(specs, o);
    REQUIRE(session.ok());
    for (size_t i = 0; i < count; ++i) {
      const Tensor& t = file->tensors[i];
      REQUIRE((*session)->Write(t.name, 0, t.data, t.nbytes).ok());
    }
    return std::move(*session);
  };
  upload("abandoned", "", 1).reset();
  CHECK(weights.status().inactive_state == InactiveState::kPrevious);
  CHECK(upload("bad", std::string(64, '1'), file->tensors.size())->Commit().code() ==
        StatusCode::kDataLoss);
  CHECK(weights.status().inactive_state == InactiveState::kPrevious);
  CHECK(weights.status().upload_bytes == 0);
  expect(initial, model->config().initial_weights_version);
  REQUIRE(upload("seed7-upload", "", file->tensors.size())->Commit().ok());
  CHECK(weights.status().last_push.pinned_staging);
  CHECK(weights.status().last_push.device_staged);
  REQUIRE(weights.Swap().ok());
  expect(seed7, "seed7-upload");
}

// The ring of pinned blocks with real asynchronous copies: more bytes than
// the ring holds, from four threads at once, read back from the GPU.
TEST_CASE("device staging moves every byte to the GPU through the pinned ring",
          "[cuda][staging]") {
  const DeviceSpec gpu{DeviceKind::kCuda, 0};
  const std::vector<size_t> sizes = {5 * DeviceStaging::kBlockBytes + 4097,
                                     DeviceStaging::kRingBytes * 2 + 1};
  std::vector<std::vector<std::byte>> source;
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<std::byte> bytes(sizes[i]);
    for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<std::byte>((k * 131 + i) >> 3);
    source.push_back(std::move(bytes));
  }
  auto staging = DeviceStaging::Create(gpu, sizes);
  REQUIRE(staging.ok());
  // Pieces larger than a block, so that most copies are block-sized.
  REQUIRE(FeedInPieces(**staging, source, DeviceStaging::kBlockBytes + (4 << 20) + 3, 4) == 0);
  REQUIRE((*staging)->Finish().ok());
  // Every block copy was timed on the device.
  const DeviceStaging::CopyStats stats = (*staging)->Stats();
  CHECK(stats.bytes == sizes[0] + sizes[1]);
  CHECK(stats.copies >= (stats.bytes + DeviceStaging::kBlockBytes - 1) / DeviceStaging::kBlockBytes);
  CHECK(stats.busy.count() > 0);
  std::printf("device staging: %zu bytes in %zu copies, %.2f GB/s while copying\n", stats.bytes,
              stats.copies, static_cast<double>(stats.bytes) / static_cast<double>(stats.busy.count()));
  for (size_t i = 0; i < sizes.size(); ++i) {
    Tensor t;
    t.name = "t" + std::to_string(i);
    t.dtype = DType::kUInt8;
    t.shape = {static_cast<int64_t>(sizes[i])};
    t.nbytes = sizes[i];
    t.owner = (*staging)->TakeTensor(i, &t.data);
    t.on_device = true;
    auto on_gpu = ToAten(t, gpu);
    REQUIRE(on_gpu.ok());
    CHECK(on_gpu->is_cuda());
    const at::Tensor back = on_gpu->cpu();
    CHECK(std::memcmp(back.const_data_ptr(), source[i].data(), sizes[i]) == 0);
  }
}

TEST_CASE("CUDA device mismatches are load errors", "[cuda]") {
  ModelConfig config;
  config.name = "far";
  config.path = CudaPackage("mlp");
  config.device = "cuda:99";
  auto far = Model::Load(config);
  CHECK(far.status().code() == StatusCode::kFailedPrecondition);
  CHECK_THAT(far.status().message(), Catch::Contains("cuda:99"));
  config.device = "cpu";
  CHECK(Model::Load(config).status().code() == StatusCode::kInvalidArgument);
  config.path = PackagePath("mlp");  // a CPU package cannot go to the GPU either
  config.device = "cuda:0";
  CHECK(Model::Load(config).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("device memory is reported once CUDA is in use", "[cuda]") {
  auto model = LoadCuda("mlp", 1);
  auto memory = QueryDeviceMemory();
  REQUIRE_FALSE(memory.empty());
  CHECK(memory[0].device == "cuda:0");
  CHECK(memory[0].reserved >= memory[0].allocated);
  CHECK(memory[0].allocated > 0);
}

TEST_CASE("a model placed on every GPU spreads requests and swaps on all", "[cuda][multi_gpu]") {
  const int gpus = at::detail::getCUDAHooks().getNumGPUs();
  if (gpus < 2) {
    WARN("skipped: this host has " << gpus << " GPU(s); placement needs 2 or more");
    return;
  }
  std::string devices;
  for (int i = 0; i < gpus; ++i) devices += (i ? ",cuda:" : "cuda:") + std::to_string(i);
  auto model = LoadCuda("mlp", 2, devices);
  REQUIRE(model->replicas().size() == static_cast<size_t>(gpus));
  CHECK(model->devices() == devices);
  CHECK(model->pool().num_runners() == static_cast<size_t>(2 * gpus));

  // Every replica serves: per-slot counters map to devices (slot % gpus).
  Reference ref = CudaReference("mlp");
  ExpectAllCorrect(*model, ref, /*threads=*/4 * gpus, /*requests_each=*/200);
  const auto per_runner = model->pool().stats().completed_per_runner;
  std::vector<uint64_t> per_device(gpus, 0);
  for (size_t slot = 0; slot < per_runner.size(); ++slot) per_device[slot % gpus] += per_runner[slot];
  for (int d = 0; d < gpus; ++d) {
    INFO("cuda:" << d);
    CHECK(per_device[d] > 0);
  }

  // A swap changes the weights on every device at once.
  auto weights = SafetensorsFile::Open(FixturePath("mlp.seed7.weights.safetensors"));
  REQUIRE(weights.ok());
  StageOptions options;
  options.version = "seed7";
  REQUIRE(model->weights().Stage(weights->tensors, options).ok());
  REQUIRE(model->weights().Swap("seed7").ok());
  Reference seed7 = FixtureReference("mlp.seed7.reference.safetensors");
  for (int i = 0; i < 8 * gpus; ++i) {
    auto r = model->Infer({"", seed7.inputs, {}, kNoDeadline});
    REQUIRE(r.ok());
    CHECK(r->weights_version == "seed7");
    CHECK(Mismatch(*r, *model, seed7, kRtol, kAtol) == "");
  }
  CHECK(model->weights().status().bytes_in_use == 2 * gpus * model->info().constants_nbytes);
}

namespace {

// A request that fails on the device: tiny_lm with every token out of its
// 100-row embedding (the generated kernel's bounds check), or checked with
// negative probabilities (its torch._assert_async). On CUDA both are
// device-side asserts, which leave the CUDA context unusable for every later
// call in that process.
InferRequest CudaPoisonRequest(const std::string& name) {
  Reference ref = CudaReference(name);
  InferRequest request;
  for (const Tensor& t : ref.inputs) {
    const size_t n = static_cast<size_t>(NumElements(t.shape));
    if (t.dtype == DType::kInt64) {
      request.inputs.push_back(
          Tensor::FromVector(t.name, DType::kInt64, t.shape, std::vector<int64_t>(n, 1000)));
    } else {
      request.inputs.push_back(
          Tensor::FromVector(t.name, DType::kFloat32, t.shape, std::vector<float>(n, -0.5f)));
    }
  }
  return request;
}

}  // namespace

TEST_CASE("process isolation contains a CUDA device-side assert", "[cuda][containment]") {
  // (checked, whose torch._assert_async is the other device-side assert, is
  // CPU-only: inductor trips it while compiling for CUDA.)
  for (const std::string name : {"tiny_lm"}) {
    INFO(name);
    ModelConfig config;
    config.name = name;
    config.path = CudaPackage(name);
    config.device = "cuda:0";
    config.num_runners = 2;
    config.isolation = Isolation::kProcess;
    auto loaded = Model::Load(config);
    INFO(loaded.status().ToString());
    REQUIRE(loaded.ok());
    Model& model = **loaded;
    const Reference ref = CudaReference(name);
    ExpectAllCorrect(model, ref, /*threads=*/2, /*requests_each=*/20);

    const auto start = std::chrono::steady_clock::now();
    auto poisoned = model.Infer(CudaPoisonRequest(name));
    REQUIRE_FALSE(poisoned.ok());
    WARN(name << ": poison request answered: " << poisoned.status().ToString());
    CHECK_THAT(poisoned.status().message(), Catch::Contains(name));
    // The worker with the poisoned context is replaced; the model serves again.
    ExpectAllCorrect(model, ref, /*threads=*/2, /*requests_each=*/20);
    WARN(name << ": served again after "
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
              << " s; restarts " << model.restarts());
    CHECK(model.restarts() >= 1);
    CHECK(model.availability() == Availability::kServing);
  }
}
