// Weight memory accounting and staging budgets: StagingBudget on its own,
// then ConstantBufferManager's per-buffer numbers and budget refusals on the
// zoo's mlp.
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "common/process_memory.h"
#include "common/safetensors.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/model.h"
#include "runtime/staging_budget.h"
#include "runtime/upload_session.h"
#include "tests/support/test_models.h"

using namespace pt2serve;
using namespace pt2serve::testing;

namespace {

std::shared_ptr<Model> LoadMlp(size_t model_budget = 0,
                               std::shared_ptr<StagingBudget> server_budget = nullptr) {
  ModelConfig config;
  config.name = "mlp";
  config.path = PackagePath("mlp");
  config.weights_staging_budget_bytes = model_budget;
  auto model = Model::Load(config, std::move(server_budget));
  INFO(model.status().ToString());
  REQUIRE(model.ok());
  return *model;
}

std::vector<Tensor> Seed7() {
  auto weights = SafetensorsFile::Open(FixturePath("mlp.seed7.weights.safetensors"));
  INFO(weights.status().ToString());
  REQUIRE(weights.ok());
  return weights->tensors;
}

StageOptions Version(std::string version) {
  StageOptions options;
  options.version = std::move(version);
  return options;
}

std::vector<TensorSpec> SpecsOf(const std::vector<Tensor>& tensors) {
  std::vector<TensorSpec> specs;
  for (const Tensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  return specs;
}

}  // namespace

TEST_CASE("StagingBudget: reservations within the limit, refusals name the key",
          "[memory][staging_budget]") {
  auto budget = std::make_shared<StagingBudget>(1000);
  auto a = StagingBudget::Open(budget);
  auto b = StagingBudget::Open(budget);
  REQUIRE(a->Reserve(600, "push A").ok());
  CHECK(budget->in_use() == 600);

  Status refused = b->Reserve(500, "push B");
  CHECK(refused.code() == StatusCode::kResourceExhausted);
  CHECK_THAT(refused.message(), Catch::Contains("server.weights_staging_budget_bytes"));
  CHECK_THAT(refused.message(), Catch::Contains("push B needs 500 bytes"));
  CHECK_THAT(refused.message(), Catch::Contains("600 bytes other models hold"));
  CHECK(b->charge() == 0);
  CHECK(budget->in_use() == 600);  // a refusal changes nothing

  REQUIRE(b->Reserve(400, "push B").ok());  // exactly at the limit
  CHECK(budget->in_use() == 1000);
  // An account's own charge is replaced, not added to: A may re-reserve its 600.
  CHECK(a->Reserve(600, "push A again").ok());
  CHECK(a->Reserve(601, "push A bigger").code() == StatusCode::kResourceExhausted);
  // Lowering never fails and gives the bytes back.
  a->Set(100);
  CHECK(budget->in_use() == 500);
  b.reset();  // an unloaded model's charge goes with it
  CHECK(budget->in_use() == 100);

  auto unlimited = std::make_shared<StagingBudget>(0);
  auto c = StagingBudget::Open(unlimited);
  CHECK(c->Reserve(size_t{1} << 40, "huge").ok());  // 0 = no limit, still counted
  CHECK(unlimited->in_use() == size_t{1} << 40);
}

TEST_CASE("StagingBudget: concurrent reservations never exceed the limit",
          "[memory][staging_budget]") {
  auto budget = std::make_shared<StagingBudget>(10'000);
  std::atomic<size_t> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto account = StagingBudget::Open(budget);
        if (account->Reserve(3'000, "push").ok()) {
          ++granted;
          CHECK(budget->in_use() <= 10'000);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(granted.load() > 0);
  CHECK(budget->in_use() == 0);  // every account released on destruction
}

TEST_CASE("Process memory: RSS and a push window's peak", "[memory][process]") {
  const ProcessMemory before = ReadProcessMemory();
  REQUIRE(before.rss_bytes > 0);
  CHECK(before.peak_rss_bytes >= before.rss_bytes);
  constexpr size_t kBytes = 64 << 20;
  size_t peak = 0;
  {
    PeakRssWindow window;
    {
      std::vector<char> touched(kBytes, 1);  // resident while it lives
      window.Sample();
      CHECK(touched[kBytes - 1] == 1);
    }  // freed before Finish: only the peak remembers it
    peak = window.Finish();
    CHECK(peak >= window.rss_before() + kBytes * 9 / 10);
    CHECK(window.Finish() == peak);  // idempotent
  }
  // The lifetime peak survives the window's reset of the kernel's mark.
  CHECK(ReadProcessMemory().peak_rss_bytes >= peak);
}

TEST_CASE("Weight memory: per-buffer bytes follow stage, swap and free",
          "[memory][constant_buffer]") {
  auto model = LoadMlp();
  const PackageInfo& info = model->info();
  ConstantBufferManager& weights = model->weights();
  // The package's table: the blob holds at least the updatable weights.
  REQUIRE(info.blob_nbytes >= info.constants_nbytes);
  const size_t buffer = info.blob_nbytes + info.folded_nbytes;

  BufferStatus st = weights.status();
  CHECK(st.active_memory.host_bytes == buffer);  // a CPU model: host memory
  CHECK(st.active_memory.device_bytes == 0);
  CHECK(st.active_memory.folded_bytes == info.folded_nbytes);
  CHECK(st.inactive_memory.host_bytes == 0);
  CHECK(st.staging_bytes == 0);
  CHECK(st.last_push.version.empty());

  REQUIRE(weights.Stage(Seed7(), Version("seed7")).ok());
  st = weights.status();
  CHECK(st.inactive_memory.host_bytes == buffer);  // 2x while staged
  CHECK(st.inactive_memory.folded_bytes == info.folded_nbytes);
  CHECK(st.staging_bytes == buffer);
  CHECK(st.upload_bytes == 0);
  CHECK(st.last_push.version == "seed7");
  CHECK(st.last_push.ok);
  CHECK(st.last_push.staging_bytes == buffer);
  CHECK(st.last_push.process_rss_before > 0);
  CHECK(st.last_push.process_peak_rss >= st.last_push.process_rss_before);

  REQUIRE(weights.Swap().ok());  // the old set is PREVIOUS: still held
  CHECK(weights.status().inactive_memory.host_bytes == buffer);
  CHECK(weights.status().staging_bytes == buffer);

  REQUIRE(weights.FreeInactive().ok());  // back to 1x
  st = weights.status();
  CHECK(st.inactive_memory.host_bytes == 0);
  CHECK(st.inactive_memory.folded_bytes == 0);
  CHECK(st.staging_bytes == 0);
  CHECK(st.active_memory.host_bytes == buffer);

  // The next push refolds the freed buffer first: it reserves one more F.
  REQUIRE(weights.Stage(Seed7(), Version("again")).ok());
  st = weights.status();
  CHECK(st.last_push.staging_bytes == buffer + info.folded_nbytes);
  CHECK(st.staging_bytes == buffer);  // held afterwards: the buffer alone
}

TEST_CASE("Weight memory: an upload holds its buffers until it ends",
          "[memory][constant_buffer]") {
  auto server_budget = std::make_shared<StagingBudget>(0);
  auto model = LoadMlp(0, server_budget);
  ConstantBufferManager& weights = model->weights();
  const size_t w = model->info().constants_nbytes;
  const size_t buffer = model->info().blob_nbytes + model->info().folded_nbytes;
  const auto seed7 = Seed7();
  {
    auto session = weights.BeginUpload(SpecsOf(seed7), Version("up"));
    REQUIRE(session.ok());
    BufferStatus st = weights.status();
    CHECK(st.upload_bytes == w);
    CHECK(st.staging_bytes == w + buffer);  // reserved at the header
    CHECK(server_budget->in_use() == w + buffer);
  }  // abandoned: nothing staged, everything released
  BufferStatus st = weights.status();
  CHECK(st.upload_bytes == 0);
  CHECK(st.staging_bytes == 0);
  CHECK(server_budget->in_use() == 0);
  CHECK(st.last_push.version == "up");
  CHECK_FALSE(st.last_push.ok);
  CHECK(st.last_push.staging_bytes == w + buffer);

  auto session = weights.BeginUpload(SpecsOf(seed7), Version("up2"));
  REQUIRE(session.ok());
  for (const Tensor& t : seed7) REQUIRE((*session)->Write(t.name, 0, t.data, t.nbytes).ok());
  REQUIRE((*session)->Commit().ok());
  st = weights.status();
  CHECK(st.upload_bytes == 0);
  CHECK(st.staging_bytes == buffer);  // the upload buffers are gone, the staged set stays
  CHECK(server_budget->in_use() == buffer);
  CHECK(st.last_push.ok);
}

TEST_CASE("Staging budgets refuse a push at its header, changing nothing",
          "[memory][constant_buffer]") {
  const auto seed7 = Seed7();
  SECTION("the model's budget") {
    auto probe = LoadMlp();
    const size_t w = probe->info().constants_nbytes;
    const size_t buffer = probe->info().blob_nbytes + probe->info().folded_nbytes;
    probe.reset();
    // Room for a server-side push (no upload buffers) but not a streamed one.
    auto model = LoadMlp(buffer + w - 1);
    auto session = model->weights().BeginUpload(SpecsOf(seed7), Version("big"));
    REQUIRE_FALSE(session.ok());
    CHECK(session.status().code() == StatusCode::kResourceExhausted);
    CHECK_THAT(session.status().message(), Catch::Contains("weights_staging_budget_bytes"));
    CHECK_THAT(session.status().message(), Catch::Contains(std::to_string(w + buffer)));
    BufferStatus st = model->weights().status();
    CHECK(st.staging_bytes == 0);
    CHECK(st.upload_bytes == 0);
    CHECK(st.inactive_state == InactiveState::kEmpty);
    CHECK(st.active.version == "initial");
    CHECK_FALSE(st.last_push.ok);
    CHECK(st.last_push.staging_bytes == w + buffer);
    // Staging tensors the caller holds needs only the inactive buffer.
    CHECK(model->weights().Stage(seed7, Version("fits")).ok());
  }
  SECTION("the server's budget, shared by every model") {
    auto probe = LoadMlp();
    const size_t buffer = probe->info().blob_nbytes + probe->info().folded_nbytes;
    probe.reset();
    auto server_budget = std::make_shared<StagingBudget>(buffer + buffer / 2);
    auto first = LoadMlp(0, server_budget);
    auto second = LoadMlp(0, server_budget);
    REQUIRE(first->weights().Stage(seed7, Version("a")).ok());
    CHECK(server_budget->in_use() == buffer);
    Status refused = second->weights().Stage(seed7, Version("b"));
    CHECK(refused.code() == StatusCode::kResourceExhausted);
    CHECK_THAT(refused.message(), Catch::Contains("server.weights_staging_budget_bytes"));
    CHECK(second->weights().status().inactive_state == InactiveState::kEmpty);
    CHECK(server_budget->in_use() == buffer);
    // Restaging the first model reuses its own inactive buffer: allowed.
    CHECK(first->weights().Stage(seed7, Version("a2")).ok());
    // Freeing it makes room for the second.
    REQUIRE(first->weights().FreeInactive().ok());
    CHECK(server_budget->in_use() == 0);
    CHECK(second->weights().Stage(seed7, Version("b")).ok());
    CHECK(server_budget->in_use() == buffer);
    second.reset();  // unloading releases its charge
    CHECK(server_budget->in_use() == 0);
  }
}
