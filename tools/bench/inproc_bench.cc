// inproc_bench: the in-process baseline for grpc_bench.
//
// Loads a package as the daemon does (Model::Load: RunnerPool admission,
// validation, device upload, output copy-out) and drives Model::Infer from N
// closed-loop threads, with the same driver, synthetic inputs and output
// format as grpc_bench, so the two can be put side by side: the difference
// is what the gRPC layer (serialization, HTTP/2, the server's threads)
// costs.
//
//   inproc_bench PACKAGE.pt2 --runners 2 --batch 1 --streams 1,2,4,8,16
//       --seconds 5 --warmup 1 [--isolation process] [--json out.jsonl]
//
// Leaves LibTorch's intra-op thread count alone, as the daemon does.
// Exit status 1 when any request failed.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>

#include "runtime/model.h"
#include "tools/bench/bench_util.h"

namespace pt2serve::bench {
namespace {

int Main(int argc, char** argv) {
  ModelConfig config;
  config.name = "mlp";
  config.num_runners = 2;
  config.max_queue_size = 1024;
  int64_t batch = 1;
  std::string streams_text = "1";
  double seconds = 5, warmup = 1, pause_us = 0;
  std::string json, label = "in-process", name;
  bool no_header = false;

  CLI::App app{"inproc_bench: closed-loop Model::Infer load (the in-process baseline)"};
  app.add_option("package", config.path, "The .pt2 package")->required();
  app.add_option("--name", name, "Model column text (default: the package's file stem)");
  app.add_option("--runners", config.num_runners, "Runners (as the daemon's runners=N)")
      ->capture_default_str();
  app.add_option("--queue", config.max_queue_size, "Max queued requests")->capture_default_str();
  app.add_option("--device", config.device, "auto, cpu, cuda:N, ...")->capture_default_str();
  std::string isolation = "in_process";
  app.add_option("--isolation", isolation,
                 "in_process, or process (the model in a pt2serve-worker: what containment "
                 "costs per request)")
      ->check(CLI::IsMember({"in_process", "process"}))
      ->capture_default_str();
  app.add_option("--batch", batch, "Leading (batch) dim for dynamic inputs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--streams", streams_text, "Concurrent callers, a list runs each: 1,2,4")
      ->capture_default_str();
  app.add_option("--seconds", seconds, "Measured window per stream count")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", warmup, "Warm-up before each window, seconds")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--pause-us", pause_us,
                 "Idle time between a caller's calls (not timed): the gaps a 1-stream gRPC "
                 "client leaves, so the call starts as cold as in the daemon")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--json", json, "Append one JSON object per row to this file");
  app.add_option("--label", label, "Protocol column text")->capture_default_str();
  app.add_flag("--no-header", no_header, "Do not print the Markdown table header");
  CLI11_PARSE(app, argc, argv);

  auto stream_counts = ParseIntList(streams_text);
  if (!stream_counts.ok()) {
    std::fprintf(stderr, "inproc_bench: --streams %s\n", stream_counts.status().ToString().c_str());
    return 2;
  }
  if (name.empty()) {
    const auto slash = config.path.find_last_of('/');
    name = config.path.substr(slash == std::string::npos ? 0 : slash + 1);
    if (const auto dot = name.find('.'); dot != std::string::npos) name.resize(dot);
  }
  config.name = name;
  config.isolation = *IsolationFromName(isolation);
  auto model = Model::Load(config);
  if (!model.ok()) {
    std::fprintf(stderr, "inproc_bench: %s\n", model.status().ToString().c_str());
    return 1;
  }
  InferRequest request;
  uint64_t seed = 1;
  for (const TensorSpec& spec : (*model)->signature().inputs) {
    const Shape shape = ConcreteShape(spec.shape, batch);
    std::vector<std::byte> data = SyntheticData(spec.dtype, NumElements(shape), seed++);
    request.inputs.push_back(Tensor::Copy(spec.name, spec.dtype, shape, data.data(), data.size()));
  }
  {
    auto probe = (*model)->Infer(request);
    if (!probe.ok()) {
      std::fprintf(stderr, "inproc_bench: first request failed: %s\n",
                   probe.status().ToString().c_str());
      return 1;
    }
  }

  if (!no_header) std::printf("%s\n", MarkdownHeader().c_str());
  bool failed = false;
  Model& m = **model;
  for (int streams : *stream_counts) {
    DriverOptions d{streams, warmup, seconds, pause_us};
    DriverResult r = RunClosedLoop(d, [&](int) -> BenchCall {
      return [&](std::string* error) {
        auto response = m.Infer(request);
        if (!response.ok()) *error = response.status().ToString();
        return response.ok();
      };
    });
    const int rc = EmitRow("inproc_bench", ResultRow{label, name, batch, r}, json);
    if (rc == 2) return 2;
    failed = failed || rc == 1;
  }
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace pt2serve::bench

int main(int argc, char** argv) { return pt2serve::bench::Main(argc, argv); }
