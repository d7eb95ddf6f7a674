// In-process throughput: raw AOTIModelPackageLoader vs pt2serve's RunnerPool.
//
// T closed-loop threads drive one package (same num_runners everywhere) for a
// fixed time, three ways, back to back:
//   raw:   loader.run() directly (extra callers wait inside the container);
//   pool:  the same loader.run() behind a RunnerPool (admission only), which
//          is what the "pool within 5% of raw" target measures;
//   model: Model::Infer, the full in-process request path (validation,
//          tensor conversion, output copy-out) that the servers call.
// Prints a Markdown table.
//
// Usage: pool_bench PACKAGE.pt2 [--seconds S] [--runners R,R..] [--threads T,T..]
#include <ATen/Parallel.h>
#include <ATen/ops/rand.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/model.h"
#include "devices/tensor_convert.h"

using namespace pt2serve;
using Clock = std::chrono::steady_clock;

namespace {

struct Result {
  double rps = 0;
  double p50_us = 0;
  double p99_us = 0;
};

std::vector<int> ParseList(const char* s) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stoi(item));
  return out;
}

// Runs `call` from `threads` threads for `seconds`; returns throughput and
// latency percentiles over all calls.
template <typename Call>
Result Drive(int threads, double seconds, Call call) {
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> lat(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      lat[t].reserve(1 << 20);
      while (!stop.load(std::memory_order_relaxed)) {
        auto start = Clock::now();
        call();
        lat[t].push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : pool) th.join();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  Result r;
  r.rps = all.size() / seconds;
  if (!all.empty()) {
    r.p50_us = all[all.size() / 2];
    r.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PACKAGE.pt2 [--seconds S] [--runners 2,8] [--threads 1,2,4,8]\n",
                 argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  double seconds = 2.0;
  std::vector<int> runner_counts = {2, 8};
  std::vector<int> thread_counts = {1, 2, 4, 8};
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--seconds")) seconds = std::stod(argv[i + 1]);
    if (!std::strcmp(argv[i], "--runners")) runner_counts = ParseList(argv[i + 1]);
    if (!std::strcmp(argv[i], "--threads")) thread_counts = ParseList(argv[i + 1]);
  }
  at::set_num_threads(1);  // one intra-op thread per call, as the server runs

  std::printf("| runners | threads | raw req/s | pool req/s | pool/raw | model req/s | raw p50 us | pool p50 us | model p50 us | raw p99 us | pool p99 us | model p99 us |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int runners : runner_counts) {
    ModelConfig config;
    config.name = "bench";
    config.path = path;
    config.num_runners = runners;
    config.max_queue_size = 1024;
    auto model = Model::Load(config);
    if (!model.ok()) {
      std::fprintf(stderr, "load failed: %s\n", model.status().ToString().c_str());
      return 1;
    }
    const TensorSpec& spec = (*model)->signature().inputs.at(0);
    Shape shape = spec.shape;
    for (auto& d : shape) d = d < 0 ? 1 : d;  // batch 1
    at::Tensor input = at::rand(shape);
    auto host = FromAten(input, spec.name);
    InferRequest request;
    request.inputs = {*host};

    torch::inductor::AOTIModelPackageLoader raw(path, "model", false, runners);
    std::vector<at::Tensor> raw_inputs = {input};
    RunnerPool pool({static_cast<size_t>(runners), 1024});
    auto pooled_call = [&] {
      return pool.Run([&](size_t) {
        raw.run(raw_inputs);
        return Status::Ok();
      });
    };

    for (int threads : thread_counts) {
      // Warm both up, then measure raw and pool back to back.
      for (int i = 0; i < 200; ++i) {
        raw.run(raw_inputs);
        (void)(*model)->Infer(request);
      }
      Result r = Drive(threads, seconds, [&] { raw.run(raw_inputs); });
      Result p = Drive(threads, seconds, [&] { (void)pooled_call(); });
      Result m = Drive(threads, seconds, [&] { (void)(*model)->Infer(request); });
      std::printf("| %d | %d | %.0f | %.0f | %.3f | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n",
                  runners, threads, r.rps, p.rps, p.rps / r.rps, m.rps, r.p50_us, p.p50_us,
                  m.p50_us, r.p99_us, p.p99_us, m.p99_us);
      std::fflush(stdout);
    }
  }
  return 0;
}
