// pt2ctl's pure helpers (chunk plan, checksum order, manifest, rendering,
// exit-code classification) and WeightPusher against an in-process fake
// Admin server that records the stream.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "common/safetensors.h"
#include "common/sha256.h"
#include "tools/pt2ctl/admin_client.h"
#include "tools/pt2ctl/fleet_rollout.h"
#include "tools/pt2ctl/outcome.h"
#include "tools/pt2ctl/progress_bar.h"
#include "tools/pt2ctl/table.h"
#include "tools/pt2ctl/weight_pusher.h"

using namespace pt2serve;
using namespace pt2serve::ctl;
namespace v1 = pt2serve::v1;

namespace {

std::vector<Tensor> SampleTensors() {
  std::vector<float> a(10);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  std::vector<int64_t> b = {7, 8, 9};
  return {Tensor::FromVector("a.weight", DType::kFloat32, {2, 5}, a),
          Tensor::FromVector("b", DType::kInt64, {3}, b),
          Tensor::FromVector("empty", DType::kFloat16, {0, 4}, std::vector<uint16_t>{})};
}

std::string Concat(const std::vector<Tensor>& tensors) {
  std::string out;
  for (const Tensor& t : tensors) out.append(reinterpret_cast<const char*>(t.data), t.nbytes);
  return out;
}

// Writes a safetensors file of `tensors` (header order = vector order).
std::string WriteSafetensors(const std::vector<Tensor>& tensors, const std::string& name) {
  std::string header = "{";
  uint64_t offset = 0;
  for (const Tensor& t : tensors) {
    if (header.size() > 1) header += ",";
    header += "\"" + t.name + "\":{\"dtype\":\"" + std::string(SafetensorsDTypeCode(t.dtype)) +
              "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      header += (i ? "," : "") + std::to_string(t.shape[i]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t.nbytes) + "]}";
    offset += t.nbytes;
  }
  header += "}";
  const auto path = std::filesystem::temp_directory_path() /
                    (name + "." + std::to_string(::getpid()) + ".safetensors");
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << Concat(tensors);
  return path.string();
}

// Records UpdateConstantBuffer streams; everything else is refused.
class FakeAdmin final : public v1::Admin::Service {
 public:
  grpc::Status UpdateConstantBuffer(grpc::ServerContext* ctx,
                                    grpc::ServerReader<v1::UpdateConstantBufferRequest>* reader,
                                    v1::UpdateConstantBufferResponse* response) override {
    std::lock_guard lock(mu_);
    auto auth = ctx->client_metadata().find("authorization");
    authorization = auth == ctx->client_metadata().end()
                        ? ""
                        : std::string(auth->second.data(), auth->second.size());
    messages.clear();
    v1::UpdateConstantBufferRequest request;
    while (reader->Read(&request)) messages.push_back(request);
    if (!refuse.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, refuse);
    response->set_model(messages.at(0).header().model());
    response->set_version(messages.at(0).header().version());
    return grpc::Status::OK;
  }
  grpc::Status GetConstantBufferStatus(grpc::ServerContext*,
                                       const v1::ConstantBufferStatusRequest*,
                                       v1::ConstantBufferStatus*) override {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "busy");
  }

  std::mutex mu_;
  std::string authorization;
  std::vector<v1::UpdateConstantBufferRequest> messages;
  std::string refuse;  // non-empty: answer INVALID_ARGUMENT with this message
};

struct FakeServer {
  FakeAdmin service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  FakeServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  }
  ~FakeServer() { server->Shutdown(); }
  ClientOptions Options() const {
    ClientOptions o;
    o.admin_address = "127.0.0.1:" + std::to_string(port);
    o.token = "tok";
    o.timeout = std::chrono::seconds(10);
    return o;
  }
};

}  // namespace

TEST_CASE("chunk plan covers every byte in tensor order", "[pt2ctl]") {
  const auto tensors = SampleTensors();  // 40 + 24 + 0 bytes
  const auto plan = WeightPusher::PlanChunks(tensors, 16);
  const std::vector<ChunkRef> want = {{0, 0, 16}, {0, 16, 16}, {0, 32, 8}, {1, 0, 16}, {1, 16, 8}};
  CHECK(plan == want);
  CHECK(WeightPusher::PlanChunks(tensors, 1 << 20).size() == 2);
  CHECK(WeightPusher::PlanChunks(tensors, 1).size() == 64);
}

TEST_CASE("manifest lists name, dtype, shape and byte size", "[pt2ctl]") {
  auto manifest = WeightPusher::BuildManifest(SampleTensors());
  REQUIRE(manifest.ok());
  REQUIRE(manifest->entries_size() == 3);
  const auto& a = manifest->entries(0);
  CHECK(a.name() == "a.weight");
  CHECK(a.dtype() == v1::DT_FLOAT32);
  CHECK(std::vector<int64_t>(a.shape().begin(), a.shape().end()) == std::vector<int64_t>{2, 5});
  CHECK(a.byte_size() == 40);
  CHECK(manifest->entries(1).dtype() == v1::DT_INT64);
  CHECK(manifest->entries(2).dtype() == v1::DT_FLOAT16);
  CHECK(manifest->entries(2).byte_size() == 0);
}

TEST_CASE("default version label is the file stem", "[pt2ctl]") {
  CHECK(WeightPusher::DefaultVersion("/w/seed7.safetensors") == "seed7");
  CHECK(WeightPusher::DefaultVersion("rel/v2.1.safetensors") == "v2.1");
  CHECK(WeightPusher::DefaultVersion("plain") == "plain");
}

TEST_CASE("progress line and byte formatting", "[pt2ctl]") {
  const std::string line = ProgressBar::Render("push m", 500'000, 1'000'000, 0.5, 10);
  CHECK(line == "push m  50% [#####.....]    0.50/1.00 MB      1.0 MB/s");
  CHECK(ProgressBar::Render("x", 0, 0, 0, 4).find("100% [####]") != std::string::npos);
  CHECK(ProgressBar::Render("x", 200'000'000, 400'000'000, 2, 4) ==
        "x  50% [##..]   200.0/400.0 MB    100.0 MB/s");
  CHECK(FormatBytes(0) == "0 B");
  CHECK(FormatBytes(999) == "999 B");
  CHECK(FormatBytes(6432) == "6.4 KB");
  CHECK(FormatBytes(12'300'000) == "12.3 MB");
  CHECK(FormatBytes(2'000'000'000) == "2.00 GB");
}

TEST_CASE("table aligns columns", "[pt2ctl]") {
  Table t({"NAME", "STATE", "REASON"});
  t.AddRow({"mlp", "READY", ""});
  t.AddRow({"a-long-name", "FAILED", "boom"});
  CHECK(t.ToString() ==
        "NAME         STATE   REASON\n"
        "mlp          READY\n"
        "a-long-name  FAILED  boom\n");
}

TEST_CASE("outcomes map to exit codes and messages", "[pt2ctl]") {
  CHECK(Outcome().ok());
  CHECK(static_cast<int>(Outcome().exit_code()) == 0);
  const auto refused = Outcome::FromRpc(
      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "nothing staged"), true, "h:1");
  CHECK(static_cast<int>(refused.exit_code()) == 1);
  CHECK(refused.ErrorLine() == "pt2ctl: FAILED_PRECONDITION: nothing staged");
  const auto unreachable =
      Outcome::FromRpc(grpc::Status(grpc::StatusCode::UNAVAILABLE, "refused"), false, "h:1");
  CHECK(static_cast<int>(unreachable.exit_code()) == 3);
  CHECK(unreachable.ErrorLine() == "pt2ctl: UNAVAILABLE: cannot reach the server at h:1: refused");
  const auto local = Outcome::LocalError("bad \"file\"\n");
  CHECK(static_cast<int>(local.exit_code()) == 2);
  CHECK(local.ErrorLine() == "pt2ctl: bad \"file\"\n");
  CHECK(local.ErrorJson() ==
        R"({"error":{"code":"LOCAL_ERROR","message":"bad \"file\"\n","exit_code":2}})");
  CHECK(JsonEscape(std::string("a\x01", 2)) == "a\\u0001");
}

TEST_CASE("push streams header, chunks, and a trailer with the chunks' sha256", "[pt2ctl]") {
  FakeServer fake;
  AdminClient client(fake.Options());
  WeightPusher pusher(client);
  const auto tensors = SampleTensors();
  PushOptions options;
  options.model = "m";
  options.file = WriteSafetensors(tensors, "pt2ctl_push");
  options.chunk_bytes = 16;
  PushResult result;
  const Outcome outcome = pusher.Push(options, &result);
  REQUIRE(outcome.ok());
  std::lock_guard lock(fake.service.mu_);
  CHECK(fake.service.authorization == "Bearer tok");
  const auto& msgs = fake.service.messages;
  REQUIRE(msgs.size() == 1 + 5 + 1);
  const auto& header = msgs[0].header();
  CHECK(header.model() == "m");
  CHECK(header.version() == std::filesystem::path(options.file).stem().string());
  CHECK(header.tensors().entries_size() == 3);
  CHECK(header.sha256().empty());
  CHECK(header.sha256_in_trailer());
  Sha256 hasher;
  uint64_t bytes = 0;
  for (size_t i = 1; i + 1 < msgs.size(); ++i) {
    REQUIRE(msgs[i].has_chunk());
    hasher.Update(msgs[i].chunk().data());
    bytes += msgs[i].chunk().data().size();
  }
  REQUIRE(msgs.back().has_trailer());
  const std::string sent = hasher.FinishHex();
  CHECK(msgs.back().trailer().sha256() == sent);
  CHECK(sent == Sha256::HexOf(Concat(tensors)));
  CHECK(bytes == 64);
  CHECK(result.bytes_sent == 64);
  CHECK(result.chunks == 5);
  CHECK(result.sha256 == sent);
  CHECK(msgs[4].chunk().name() == "b");
  CHECK(msgs[4].chunk().offset() == 0);
  std::filesystem::remove(options.file);
}

TEST_CASE("push reports server refusals (exit 1) and local errors (exit 2)", "[pt2ctl]") {
  FakeServer fake;
  fake.service.refuse = "missing 'x'";
  AdminClient client(fake.Options());
  WeightPusher pusher(client);
  PushOptions options;
  options.model = "m";
  options.file = WriteSafetensors(SampleTensors(), "pt2ctl_refused");
  options.version = "v";
  PushResult result;
  Outcome outcome = pusher.Push(options, &result);
  CHECK(static_cast<int>(outcome.exit_code()) == 1);
  CHECK(outcome.ErrorLine() == "pt2ctl: INVALID_ARGUMENT: missing 'x'");
  std::filesystem::remove(options.file);

  options.file = "/nonexistent/w.safetensors";
  outcome = pusher.Push(options, &result);
  CHECK(static_cast<int>(outcome.exit_code()) == 2);

  v1::ConstantBufferStatus status;
  outcome = client.GetStatus("m", &status);
  CHECK(static_cast<int>(outcome.exit_code()) == 1);
  CHECK(outcome.code() == "FAILED_PRECONDITION");
}

TEST_CASE("an address nobody listens on is unreachable (exit 3)", "[pt2ctl]") {
  int port = 0;
  {
    FakeServer gone;  // a port that was just free
    port = gone.port;
  }
  ClientOptions o;
  o.admin_address = "127.0.0.1:" + std::to_string(port);
  o.token = "tok";
  o.timeout = std::chrono::seconds(10);
  AdminClient client(o);
  v1::ConstantBufferStatus status;
  const Outcome outcome = client.GetStatus("m", &status);
  CHECK(static_cast<int>(outcome.exit_code()) == 3);
  CHECK(outcome.code() == "UNAVAILABLE");
}

TEST_CASE("fleet rollout: commit skew, headless resolution, JSON", "[pt2ctl][fleet]") {
  CHECK(FleetRollout::SkewMs({}) == 0);
  CHECK(FleetRollout::SkewMs({5'000'000}) == 0);
  CHECK(FleetRollout::SkewMs({1'000'000, 0, 1'002'500, 1'001'000}) == Approx(2.5));

  auto local = FleetRollout::ResolveHeadless("127.0.0.1:8003");
  REQUIRE(local.ok());
  CHECK(*local == std::vector<std::string>{"127.0.0.1:8003"});
  auto v6 = FleetRollout::ResolveHeadless("::1:9000");
  REQUIRE(v6.ok());
  CHECK(*v6 == std::vector<std::string>{"[::1]:9000"});
  CHECK(FleetRollout::ResolveHeadless("no-port").status().code() == StatusCode::kInvalidArgument);
  CHECK(FleetRollout::ResolveHeadless("name:").status().code() == StatusCode::kInvalidArgument);
  CHECK(FleetRollout::ResolveHeadless("no-such-host.invalid:8003").status().code() ==
        StatusCode::kNotFound);

  FleetResult result;
  result.result = "aborted";
  result.sha256 = "ab";
  ReplicaReport r;
  r.endpoint = "10.0.0.1:8003";
  r.before = "initial";
  r.stage = "failed";
  r.error = "stage: \"quoted\"";
  result.replicas.push_back(r);
  const std::string json = FleetRollout::Json(result, "mlp", "v2");
  CHECK_THAT(json, Catch::StartsWith("{\"model\":\"mlp\",\"version\":\"v2\",\"result\":\"aborted\""));
  CHECK_THAT(json, Catch::Contains("\"error\":\"stage: \\\"quoted\\\"\""));
  const std::string table = FleetRollout::Table(result);
  CHECK_THAT(table, Catch::StartsWith("REPLICA"));
  CHECK_THAT(table, Catch::Contains("10.0.0.1:8003  initial  failed"));
  CHECK_FALSE(result.ok());
}

// A DNS response with the given SRV answers (port, target), as a resolver returns it.
std::vector<unsigned char> SrvResponse(const std::vector<std::pair<int, std::string>>& answers) {
  std::vector<unsigned char> m = {0x12, 0x34, 0x81, 0x80, 0, 1, 0,
                                  static_cast<unsigned char>(answers.size()), 0, 0, 0, 0};
  auto name = [&](const std::string& dotted) {
    std::string label;
    for (size_t i = 0; i <= dotted.size(); ++i) {
      if (i == dotted.size() || dotted[i] == '.') {
        m.push_back(static_cast<unsigned char>(label.size()));
        m.insert(m.end(), label.begin(), label.end());
        label.clear();
      } else {
        label += dotted[i];
      }
    }
    m.push_back(0);
  };
  name("_grpc-admin._tcp.demo-admin.ns.svc");
  m.insert(m.end(), {0, 33, 0, 1});  // QTYPE SRV, QCLASS IN
  for (const auto& [port, target] : answers) {
    m.insert(m.end(), {0xC0, 0x0C, 0, 33, 0, 1, 0, 0, 0, 30});  // name ptr, SRV, IN, TTL 30
    const size_t rdlength_at = m.size();
    m.insert(m.end(), {0, 0, 0, 0, 0, 100, static_cast<unsigned char>(port >> 8),
                       static_cast<unsigned char>(port & 0xFF)});
    name(target);
    const size_t rdlength = m.size() - rdlength_at - 2;
    m[rdlength_at] = static_cast<unsigned char>(rdlength >> 8);
    m[rdlength_at + 1] = static_cast<unsigned char>(rdlength & 0xFF);
  }
  return m;
}

TEST_CASE("fleet rollout: SRV answers become endpoints", "[pt2ctl][fleet]") {
  const auto m = SrvResponse({{8003, "10-0-0-2.demo-admin.ns.svc.cluster.local"},
                              {8003, "10-0-0-1.demo-admin.ns.svc.cluster.local"},
                              {8003, "10-0-0-1.demo-admin.ns.svc.cluster.local"}});
  auto endpoints = FleetRollout::ParseSrvAnswer(m.data(), static_cast<int>(m.size()));
  REQUIRE(endpoints.ok());
  CHECK(*endpoints == std::vector<std::string>{"10-0-0-1.demo-admin.ns.svc.cluster.local:8003",
                                               "10-0-0-2.demo-admin.ns.svc.cluster.local:8003"});
  const auto empty = SrvResponse({});
  auto none = FleetRollout::ParseSrvAnswer(empty.data(), static_cast<int>(empty.size()));
  REQUIRE(none.ok());
  CHECK(none->empty());
  CHECK(FleetRollout::ParseSrvAnswer(m.data(), 5).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(FleetRollout::ResolveSrv("_x._tcp.no-such-service.invalid").status().code() ==
        StatusCode::kNotFound);
}
