// upload_bench: weight upload + stage throughput through the admin API, and
// the daemon's memory at each step of a hot-swap.
//
//   upload_bench --admin-address 127.0.0.1:8003 --token-file T --model big_mlp
//       --weights W.safetensors [--pid DAEMON_PID] [--sha256] [--json FILE]
//
// One full cycle against a running daemon:
//   1. push: one UpdateConstantBuffer stream (header with the manifest, then
//      the tensors in --chunk-mb chunks, as `pt2ctl weights push` sends
//      them); timed from opening the stream until the server's reply, which
//      comes after the weights are staged (copied into the inactive buffer
//      and constant-folded). MB/s = weight bytes / that time. The file is
//      read once before the clock starts, so disk speed does not count.
//      With --sha256 the header carries the SHA-256 (hashed before the clock
//      starts) and the server's verification is part of the time; with
//      --sha256-trailer the client hashes while it sends and the SHA-256
//      follows in the trailer (as `pt2ctl weights push` does), all inside
//      the clock; with --server-path REL the header names that file in the
//      server's model repository and no chunks are sent (the server reads
//      the file; --weights is then only hashed for --sha256 and counted);
//   2. swap (SwapConstantBuffer): client round trip and the server's
//      swap_time_us;
//   3. free-inactive (FreeInactiveConstantBuffer).
// With --pid, the daemon's VmRSS (/proc/PID/status) is read before the push,
// polled every 5 ms during it (peak), and read after the push, the swap and
// the free. Prints a Markdown table; --json FILE appends one JSON object.
// Needs no LibTorch.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "common/background_sha256.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "pt2serve/v1/admin.grpc.pb.h"
#include "server/tensor_codec.h"
#include "tools/bench/bench_util.h"

namespace pt2serve::bench {
namespace {

namespace v1 = pt2serve::v1;

struct Options {
  std::string admin_address = "127.0.0.1:8003";
  std::string token_file;
  std::string model;
  std::string weights;
  std::string version;
  double chunk_mb = 2;  // MiB
  bool sha256 = false;
  bool sha256_trailer = false;
  std::string server_path;
  bool swap = true;
  bool free_inactive = true;
  int pid = 0;
  int timeout_s = 600;
  std::string json;
  std::string label;
};

// VmRSS of `pid` in bytes; 0 when unknown.
uint64_t ReadRss(int pid) {
  if (pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      uint64_t kb = 0;
      fields >> kb;
      return kb * 1024;
    }
  }
  return 0;
}


class Admin {
 public:
  Admin(const Options& o, std::string token) : o_(o), token_(std::move(token)) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    stub_ = v1::Admin::NewStub(
        grpc::CreateCustomChannel(o.admin_address, grpc::InsecureChannelCredentials(), args));
  }
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("authorization", "Bearer " + token_);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(o_.timeout_s));
    return ctx;
  }
  v1::Admin::Stub& stub() { return *stub_; }

 private:
  const Options& o_;
  std::string token_;
  std::unique_ptr<v1::Admin::Stub> stub_;
};

std::string Fail(const char* what, const grpc::Status& s) {
  return std::string(what) + ": grpc code " + std::to_string(static_cast<int>(s.error_code())) +
         ": " + s.error_message();
}

struct Report {
  uint64_t bytes = 0;
  size_t tensors = 0, chunks = 0;
  double hash_s = 0;          // client SHA-256, before the clock (0 without --sha256)
  double push_s = 0;          // stream open -> reply (upload + server staging)
  int64_t fold_us = 0;        // server: copy into the inactive buffer + folding
  double swap_rtt_ms = 0;
  int64_t swap_us = 0;
  double free_rtt_ms = 0;
  uint64_t freed_bytes = 0;
  uint64_t rss_before = 0, rss_peak_push = 0, rss_staged = 0, rss_swapped = 0, rss_freed = 0;
  uint64_t buffers_staged = 0;  // bytes_in_use reported after the push
};

std::string MB(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", static_cast<double>(bytes) / 1e6);
  return buf;
}

std::string DeltaMB(uint64_t now, uint64_t before) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.1f (%+.1f)", static_cast<double>(now) / 1e6,
                (static_cast<double>(now) - static_cast<double>(before)) / 1e6);
  return buf;
}

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"upload_bench: weight upload+stage throughput and daemon memory per step"};
  app.add_option("--admin-address", o.admin_address, "Admin API address")->capture_default_str();
  app.add_option("--token-file", o.token_file, "File holding the admin bearer token")->required();
  app.add_option("--model", o.model, "Model name")->required();
  app.add_option("--weights", o.weights, "Local .safetensors with every constant")->required();
  app.add_option("--version", o.version, "Version label (default: bench-<time>)");
  app.add_option("--chunk-mb", o.chunk_mb, "Chunk size, MiB")->capture_default_str();
  app.add_flag("--sha256", o.sha256, "Send the SHA-256 (the server verifies it)");
  app.add_flag("--sha256-trailer", o.sha256_trailer,
               "Hash while sending and send the SHA-256 in the trailer (as pt2ctl does)");
  app.add_option("--server-path", o.server_path,
                 "Stage this file of the server's model repository instead of streaming");
  app.add_flag("--no-swap{false}", o.swap, "Stop after the push");
  app.add_flag("--no-free{false}", o.free_inactive, "Do not free the inactive buffer at the end");
  app.add_option("--pid", o.pid, "Daemon pid, for VmRSS");
  app.add_option("--timeout-s", o.timeout_s, "RPC deadline")->capture_default_str();
  app.add_option("--json", o.json, "Append one JSON object to this file");
  app.add_option("--label", o.label, "First column text (default: the model name)");
  CLI11_PARSE(app, argc, argv);
  if (o.sha256 && o.sha256_trailer) {
    std::fprintf(stderr, "upload_bench: --sha256 and --sha256-trailer exclude each other\n");
    return 2;
  }
  if (o.sha256_trailer && !o.server_path.empty()) {
    std::fprintf(stderr, "upload_bench: --sha256-trailer needs a streamed push\n");
    return 2;
  }
  if (o.label.empty()) o.label = o.model;
  if (o.version.empty()) {
    o.version = "bench-" + std::to_string(std::chrono::system_clock::now().time_since_epoch() /
                                          std::chrono::milliseconds(1));
  }

  std::string token;
  {
    std::ifstream in(o.token_file);
    std::getline(in, token);
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
    if (token.empty()) {
      std::fprintf(stderr, "upload_bench: no token in %s\n", o.token_file.c_str());
      return 2;
    }
  }
  auto file = SafetensorsFile::Open(o.weights);
  if (!file.ok()) {
    std::fprintf(stderr, "upload_bench: %s\n", file.status().ToString().c_str());
    return 2;
  }

  Report r;
  v1::UpdateConstantBufferRequest header_msg;
  v1::UpdateHeader* header = header_msg.mutable_header();
  header->set_model(o.model);
  header->set_version(o.version);
  header->set_sha256_in_trailer(o.sha256_trailer);
  for (const Tensor& t : file->tensors) {
    r.bytes += t.nbytes;
    ++r.tensors;
    if (!o.server_path.empty()) continue;
    auto* e = header->mutable_tensors()->add_entries();
    const v1::DataType dtype = server::ToProtoDType(t.dtype);
    e->set_name(t.name);
    e->set_dtype(dtype);
    for (int64_t d : t.shape) e->add_shape(d);
    e->set_byte_size(t.nbytes);
  }
  if (!o.server_path.empty()) header->set_server_path(o.server_path);
  // Read every byte once (page cache) and hash when asked, before the clock.
  {
    const int64_t t0 = NowNs();
    Sha256 hasher;
    volatile uint64_t sink = 0;
    for (const Tensor& t : file->tensors) {
      if (o.sha256) {
        hasher.Update(t.data, t.nbytes);
      } else {
        for (size_t i = 0; i < t.nbytes; i += 4096) sink = sink + static_cast<uint8_t>(t.data[i]);
      }
    }
    if (o.sha256) {
      header->set_sha256(o.server_path.empty() ? hasher.FinishHex()
                                               : Sha256::HexOfFile(o.weights).value());
      r.hash_s = static_cast<double>(NowNs() - t0) / 1e9;
    }
  }

  Admin admin(o, token);
  r.rss_before = ReadRss(o.pid);
  std::atomic<bool> polling{true};
  std::atomic<uint64_t> peak{r.rss_before};
  std::thread poller([&] {
    while (polling.load()) {
      const uint64_t rss = ReadRss(o.pid);
      if (rss > peak.load()) peak = rss;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });

  const uint64_t chunk = std::max<uint64_t>(1, static_cast<uint64_t>(o.chunk_mb * (1 << 20)));
  v1::UpdateConstantBufferResponse reply;
  grpc::Status status;
  const int64_t t0 = NowNs();
  {
    auto ctx = admin.Context();
    auto writer = admin.stub().UpdateConstantBuffer(ctx.get(), &reply);
    bool ok = writer->Write(header_msg);
    v1::UpdateConstantBufferRequest msg;
    BackgroundSha256 hasher;  // --sha256-trailer: hashes the mapped file while sending
    for (const Tensor& t : file->tensors) {
      for (uint64_t off = 0; ok && o.server_path.empty() && off < t.nbytes; off += chunk) {
        const uint64_t size = std::min<uint64_t>(chunk, t.nbytes - off);
        if (o.sha256_trailer) hasher.Update(t.data + off, size);
        v1::TensorChunk* c = msg.mutable_chunk();
        c->set_name(t.name);
        c->set_offset(off);
        c->set_data(t.data + off, size);
        ok = writer->Write(msg);
        ++r.chunks;
      }
    }
    if (ok && o.sha256_trailer) {
      msg.mutable_trailer()->set_sha256(hasher.FinishHex());
      ok = writer->Write(msg);
    }
    if (ok) writer->WritesDone();
    status = writer->Finish();
  }
  r.push_s = static_cast<double>(NowNs() - t0) / 1e9;
  polling = false;
  poller.join();
  r.rss_peak_push = peak.load();
  if (!status.ok()) {
    std::fprintf(stderr, "upload_bench: %s\n", Fail("UpdateConstantBuffer", status).c_str());
    return 1;
  }
  r.fold_us = reply.fold_time_us();
  r.rss_staged = ReadRss(o.pid);
  {
    auto ctx = admin.Context();
    v1::ConstantBufferStatusRequest req;
    req.set_model(o.model);
    v1::ConstantBufferStatus st;
    if (admin.stub().GetConstantBufferStatus(ctx.get(), req, &st).ok()) {
      r.buffers_staged = st.bytes_in_use();
    }
  }

  if (o.swap) {
    auto ctx = admin.Context();
    v1::SwapRequest req;
    req.set_model(o.model);
    req.set_expected_version(o.version);
    v1::SwapResponse resp;
    const int64_t s0 = NowNs();
    status = admin.stub().SwapConstantBuffer(ctx.get(), req, &resp);
    r.swap_rtt_ms = static_cast<double>(NowNs() - s0) / 1e6;
    if (!status.ok()) {
      std::fprintf(stderr, "upload_bench: %s\n", Fail("SwapConstantBuffer", status).c_str());
      return 1;
    }
    r.swap_us = resp.swap_time_us();
    r.rss_swapped = ReadRss(o.pid);
  }
  if (o.free_inactive) {
    auto ctx = admin.Context();
    v1::FreeInactiveRequest req;
    req.set_model(o.model);
    v1::FreeInactiveResponse resp;
    const int64_t s0 = NowNs();
    status = admin.stub().FreeInactiveConstantBuffer(ctx.get(), req, &resp);
    r.free_rtt_ms = static_cast<double>(NowNs() - s0) / 1e6;
    if (!status.ok()) {
      std::fprintf(stderr, "upload_bench: %s\n", Fail("FreeInactiveConstantBuffer", status).c_str());
      return 1;
    }
    r.freed_bytes = resp.freed_bytes();
    // glibc may hand freed memory back to the OS a moment later.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    r.rss_freed = ReadRss(o.pid);
  }

  const double mbps = static_cast<double>(r.bytes) / 1e6 / r.push_s;
  const double transfer_s = r.push_s - static_cast<double>(r.fold_us) / 1e6;
  const double transfer_mbps = transfer_s > 0 ? static_cast<double>(r.bytes) / 1e6 / transfer_s : 0;
  std::printf("| model | weights MB | sha256 | upload+stage s | upload+stage MB/s | stream only MB/s "
              "| server staging ms | swap (server) ms | swap round trip ms | free round trip ms |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  std::printf("| %s | %s | %s | %.2f | %.0f | %.0f | %.1f | %.3f | %.2f | %.2f |\n\n",
              o.label.c_str(), MB(r.bytes).c_str(),
              o.sha256 ? "yes, in the header (server verifies)"
              : o.sha256_trailer ? "yes, hashed while sending (trailer)" : "no", r.push_s, mbps, transfer_mbps,
              static_cast<double>(r.fold_us) / 1e3, static_cast<double>(r.swap_us) / 1e3,
              r.swap_rtt_ms, r.free_rtt_ms);
  if (o.pid > 0) {
    std::printf("| daemon VmRSS MB (change vs before the push) | |\n|---|---|\n");
    std::printf("| before push | %s |\n", MB(r.rss_before).c_str());
    std::printf("| peak during push | %s |\n", DeltaMB(r.rss_peak_push, r.rss_before).c_str());
    std::printf("| after push (staged) | %s |\n", DeltaMB(r.rss_staged, r.rss_before).c_str());
    if (o.swap) std::printf("| after swap | %s |\n", DeltaMB(r.rss_swapped, r.rss_before).c_str());
    if (o.free_inactive) {
      std::printf("| after free-inactive | %s |\n", DeltaMB(r.rss_freed, r.rss_before).c_str());
    }
    std::printf("\n");
  }
  if (!o.json.empty()) {
    char buf[1536];
    std::snprintf(
        buf, sizeof(buf),
        "{\"label\":\"%s\",\"model\":\"%s\",\"bytes\":%llu,\"tensors\":%zu,\"chunks\":%zu,"
        "\"sha256\":%s,\"sha256_trailer\":%s,\"server_side\":%s,\"hash_s\":%.4f,\"push_s\":%.4f,\"mb_per_s\":%.2f,"
        "\"stream_mb_per_s\":%.2f,\"fold_us\":%lld,\"swap_us\":%lld,\"swap_rtt_ms\":%.3f,"
        "\"free_rtt_ms\":%.3f,\"freed_bytes\":%llu,\"bytes_in_use_staged\":%llu,"
        "\"rss_before\":%llu,\"rss_peak_push\":%llu,\"rss_staged\":%llu,\"rss_swapped\":%llu,"
        "\"rss_freed\":%llu}",
        JsonEscape(o.label).c_str(), JsonEscape(o.model).c_str(),
        static_cast<unsigned long long>(r.bytes), r.tensors, r.chunks, o.sha256 ? "true" : "false",
        o.sha256_trailer ? "true" : "false", o.server_path.empty() ? "false" : "true",
        r.hash_s, r.push_s, mbps, transfer_mbps, static_cast<long long>(r.fold_us),
        static_cast<long long>(r.swap_us), r.swap_rtt_ms, r.free_rtt_ms,
        static_cast<unsigned long long>(r.freed_bytes),
        static_cast<unsigned long long>(r.buffers_staged),
        static_cast<unsigned long long>(r.rss_before),
        static_cast<unsigned long long>(r.rss_peak_push),
        static_cast<unsigned long long>(r.rss_staged),
        static_cast<unsigned long long>(r.rss_swapped),
        static_cast<unsigned long long>(r.rss_freed));
    if (!AppendLine(o.json, buf)) {
      std::fprintf(stderr, "upload_bench: cannot write %s\n", o.json.c_str());
      return 2;
    }
  }
  return 0;
}

}  // namespace
}  // namespace pt2serve::bench

int main(int argc, char** argv) { return pt2serve::bench::Main(argc, argv); }
