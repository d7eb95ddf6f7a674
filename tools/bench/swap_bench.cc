// swap_bench: weight hot-swap under load, pt2serve vs the raw AOTInductor
// container, in one process and one run.
//
//   swap_bench [PACKAGE.pt2] [--threads 8] [--runners 2] [--cycles 20] [--json FILE]
//
// (a) pt2serve: Model::Load with R runners; T threads call Model::Infer back
//     to back. After a warm-up and a steady window with no weight operations,
//     the main thread runs `cycles` times ConstantBufferManager::Stage(new
//     set) then Swap(). Reported: Swap() call time and SwapResult.swap_time /
//     wait_time (median, max), Stage() time, request latency (p50/p99) in the
//     steady window vs requests that overlapped a swap (or a stage), failed
//     requests, and responses whose outputs do not match the weights their
//     weights_version names.
// (b) raw AOTInductor: a second AOTIModelPackageLoader with R runners; T
//     threads call loader.run() directly while the main thread does
//     update_constant_buffer(inactive) + run_const_fold(true) +
//     swap_constant_buffer(). Callers beyond R wait inside the container
//     holding its shared lock, which starves the swap's exclusive lock
//     (shared/notes/aoti-runtime.md): a swap that has not returned after
//     --raw-timeout-s is recorded as "> N s (did not return)", the callers are
//     stopped so that it can return, and the next cycle starts with fresh
//     callers. After --raw-max-timeouts such swaps, or --raw-budget-s, the
//     remaining cycles are skipped.
// The two weight sets alternate: the package's own constants (set 0) and
// the same constants times 0.5 (set 1; integer constants unchanged), so
// every output can be checked against the set that computed it.
//
// Prints a Markdown table with both side by side; --json FILE appends one
// JSON object with every number. Exit status 1 when pt2serve failed a
// request, returned a wrong output, or a swap failed.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_runner/model_container_runner.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "devices/tensor_convert.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/model.h"
#include "runtime/local_replica.h"
#include "runtime/model_package.h"
#include "tools/bench/bench_util.h"

namespace pt2serve::bench {
namespace {

using torch::inductor::AOTIModelContainerRunner;
using torch::inductor::AOTIModelPackageLoader;

struct Options {
  std::string package;
  std::string device = "auto";
  int threads = 8;
  size_t runners = 2;
  int cycles = 20;
  double warmup_s = 1;
  double steady_s = 3;
  int gap_ms = 50;
  double raw_timeout_s = 10;
  int raw_max_timeouts = 3;
  double raw_budget_s = 90;
  bool skip_raw = false;
  bool check = true;  // compare every output with the weights that computed it
  std::string json;
};

// One request as the client threads saw it.
struct Sample {
  int64_t t0 = 0, t1 = 0;  // NowNs() at call and return
  int64_t compute_ns = 0;  // pt2serve only: RequestTiming::compute
  bool ok = false;
  bool wrong = false;      // output matches neither / not the named weights
};

struct Window {
  int64_t begin = 0, end = 0;
};

// Time of a weight operation, ms.
struct OpTimes {
  std::vector<double> ms;
  void Add(int64_t ns) { ms.push_back(static_cast<double>(ns) / 1e6); }
  double median() const { return Median(ms); }
  double max() const { return ms.empty() ? 0 : *std::max_element(ms.begin(), ms.end()); }
};

// Latencies of the requests in one class, µs.
struct ClassStats {
  LatencySummary latency;
  double rps = 0;
};

// Results of one side (pt2serve or raw).
struct SideResult {
  bool ran = false;
  int cycles_planned = 0;
  int swaps_done = 0;      // returned (in time or after the callers stopped)
  int swaps_timed_out = 0; // did not return within the timeout under load
  int cycles_skipped = 0;
  double swap_timeout_s = 0;
  OpTimes stage;           // Stage() / update+fold
  OpTimes swap_call;       // whole Swap() / swap_constant_buffer() call
  OpTimes swap_paused;     // pt2serve: SwapResult.swap_time
  OpTimes swap_wait;       // pt2serve: SwapResult.wait_time
  ClassStats steady, during_swap, during_stage;
  double steady_compute_p50_us = 0;  // pt2serve: one inference, from RequestTiming
  double steady_compute_p99_us = 0;
  uint64_t requests = 0, failed = 0, wrong = 0;
  std::string first_error;
  std::vector<std::string> swap_errors;
};

// --------------------------------------------------------------- helpers

std::string Ms(double ms) {
  char buf[64];
  if (ms < 1) {
    std::snprintf(buf, sizeof(buf), "%.3f ms", ms);
  } else if (ms < 100) {
    std::snprintf(buf, sizeof(buf), "%.2f ms", ms);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f ms", ms);
  }
  return buf;
}

// Classifies samples: steady = started and ended inside `steady`; a swap
// (stage) sample = overlapped one of the windows. Only successful requests
// count for latency.
ClassStats Classify(const std::vector<Sample>& samples, const std::vector<Window>& windows,
                    bool steady_mode) {
  std::vector<double> lat;
  int64_t covered = 0;
  for (const Window& w : windows) covered += w.end - w.begin;
  for (const Sample& s : samples) {
    if (!s.ok) continue;
    bool in = false;
    for (const Window& w : windows) {
      if (steady_mode ? (s.t0 >= w.begin && s.t1 <= w.end) : (s.t0 <= w.end && s.t1 >= w.begin)) {
        in = true;
        break;
      }
    }
    if (in) lat.push_back(static_cast<double>(s.t1 - s.t0) / 1e3);
  }
  ClassStats c;
  c.rps = steady_mode && covered > 0 ? static_cast<double>(lat.size()) / (covered / 1e9) : 0;
  c.latency = Summarize(lat);
  return c;
}

// Output check: within a small tolerance for floating types, exact otherwise.
bool SameTensor(const at::Tensor& got, const at::Tensor& want) {
  if (got.sizes() != want.sizes() || got.scalar_type() != want.scalar_type()) return false;
  if (at::isFloatingType(got.scalar_type())) {
    return at::allclose(got.to(at::kFloat), want.to(at::kFloat), 1e-3, 1e-4);
  }
  return at::equal(got, want);
}

bool SameOutputs(const std::vector<at::Tensor>& got, const std::vector<at::Tensor>& want) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!SameTensor(got[i], want[i])) return false;
  }
  return true;
}

// Host pt2serve Tensors (from Model::Infer) as CPU at::Tensors for comparison.
std::vector<at::Tensor> ToAtenHost(const std::vector<Tensor>& outputs) {
  std::vector<at::Tensor> out;
  for (const Tensor& t : outputs) {
    auto dtype = ToScalarType(t.dtype);
    at::Tensor a = at::empty(t.shape, at::TensorOptions().dtype(*dtype));
    std::memcpy(a.data_ptr(), t.data, t.nbytes);
    out.push_back(a);
  }
  return out;
}

// The two weight sets, by FQN, on the host.
struct WeightSets {
  std::map<std::string, at::Tensor> set[2];
};

StatusOr<WeightSets> MakeWeightSets(Model& model) {
  WeightSets w;
  try {
    auto& local = dynamic_cast<LocalReplica&>(*model.replicas().front());
    auto constants = local.package().runner()->extract_constants_map(/*use_inactive=*/false);
    for (const ConstantInfo& c : model.info().constants) {
      auto it = constants.find(c.fqn);
      if (it == constants.end()) return Internal("constant '" + c.fqn + "' not extractable");
      at::Tensor base = it->second.to(at::kCPU).contiguous().clone();
      w.set[0][c.fqn] = base;
      w.set[1][c.fqn] = at::isFloatingType(base.scalar_type()) ? (base * 0.5).contiguous()
                                                               : base.clone();
    }
  } catch (const std::exception& e) {
    return Internal(std::string("extracting weights: ") + e.what());
  }
  return w;
}

StatusOr<std::vector<Tensor>> HostSet(const std::map<std::string, at::Tensor>& set) {
  std::vector<Tensor> out;
  for (const auto& [fqn, t] : set) {
    PT2_ASSIGN_OR_RETURN(Tensor host, FromAten(t, fqn));
    out.push_back(std::move(host));
  }
  return out;
}

// Version labels end in "#<set>"; "initial" (the package's weights) is set 0.
int SetOfVersion(const std::string& version) {
  if (version.size() >= 2 && version[version.size() - 2] == '#') {
    return version.back() == '1' ? 1 : 0;
  }
  return 0;
}

void Sleep(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// Client threads recording samples until stopped.
class Clients {
 public:
  using Call = std::function<Sample()>;
  Clients(int n, Call call) : samples_(n) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, i, call] {
        auto& mine = samples_[i];
        mine.reserve(1 << 16);
        while (!stop_.load(std::memory_order_relaxed)) mine.push_back(call());
      });
    }
  }
  ~Clients() { Stop(); }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  // REQUIRES: stopped.
  void AppendTo(std::vector<Sample>& all) const {
    for (const auto& v : samples_) all.insert(all.end(), v.begin(), v.end());
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::vector<Sample>> samples_;
  std::vector<std::thread> threads_;
};

void Tally(SideResult& r, const std::vector<Sample>& all) {
  r.requests = all.size();
  for (const Sample& s : all) {
    if (!s.ok) ++r.failed;
    if (s.wrong) ++r.wrong;
  }
}

// ------------------------------------------------------------- pt2serve

SideResult RunPt2serve(const Options& o, Model& model, const WeightSets& sets,
                       const InferRequest& request) {
  SideResult r;
  r.ran = true;
  r.cycles_planned = o.cycles;
  std::vector<Tensor> host_sets[2];
  for (int k = 0; k < 2; ++k) {
    auto s = HostSet(sets.set[k]);
    if (!s.ok()) {
      r.swap_errors.push_back(s.status().ToString());
      return r;
    }
    host_sets[k] = std::move(s).value();
  }
  ConstantBufferManager& weights = model.weights();

  // Reference outputs of each set (no load yet).
  std::vector<at::Tensor> ref[2];
  for (int k = 0; k < 2; ++k) {
    StageOptions so;
    so.version = "ref#" + std::to_string(k);
    Status st = weights.Stage(host_sets[k], so);
    auto sw = st.ok() ? weights.Swap() : StatusOr<SwapResult>(st);
    auto resp = sw.ok() ? model.Infer(request) : StatusOr<InferResponse>(sw.status());
    if (!resp.ok()) {
      r.swap_errors.push_back("reference run: " + resp.status().ToString());
      return r;
    }
    ref[k] = ToAtenHost(resp->outputs);
  }
  if (SameOutputs(ref[0], ref[1])) {
    std::fprintf(stderr, "swap_bench: note: both weight sets give the same output; the "
                         "wrong-output check cannot tell them apart\n");
  }
  int active = 1;

  std::mutex error_mu;
  std::string first_error;
  auto call = [&]() {
    Sample s;
    s.t0 = NowNs();
    auto resp = model.Infer(request);
    s.t1 = NowNs();
    s.ok = resp.ok();
    if (!s.ok) {
      std::lock_guard lock(error_mu);
      if (first_error.empty()) first_error = resp.status().ToString();
      return s;
    }
    s.compute_ns = resp->timing.compute.count();
    s.wrong = o.check &&
              !SameOutputs(ToAtenHost(resp->outputs), ref[SetOfVersion(resp->weights_version)]);
    return s;
  };

  std::vector<Window> steady(1), swaps, stages;
  std::vector<Sample> all;
  {
    Clients clients(o.threads, call);
    Sleep(o.warmup_s);
    steady[0].begin = NowNs();
    Sleep(o.steady_s);
    steady[0].end = NowNs();
    for (int i = 0; i < o.cycles; ++i) {
      const int next = 1 - active;
      StageOptions so;
      so.version = "cycle" + std::to_string(i) + "#" + std::to_string(next);
      Window st{NowNs(), 0};
      Status staged = weights.Stage(host_sets[next], so);
      st.end = NowNs();
      if (!staged.ok()) {
        r.swap_errors.push_back("Stage: " + staged.ToString());
        continue;
      }
      stages.push_back(st);
      r.stage.Add(st.end - st.begin);
      Sleep(o.gap_ms / 1e3);
      Window sw{NowNs(), 0};
      auto swapped = weights.Swap(so.version);
      sw.end = NowNs();
      if (!swapped.ok()) {
        r.swap_errors.push_back("Swap: " + swapped.status().ToString());
        continue;
      }
      swaps.push_back(sw);
      active = next;
      ++r.swaps_done;
      r.swap_call.Add(sw.end - sw.begin);
      r.swap_paused.Add(swapped->swap_time.count());
      r.swap_wait.Add(swapped->wait_time.count());
      Sleep(o.gap_ms / 1e3);
    }
    clients.Stop();
    clients.AppendTo(all);
  }
  r.first_error = first_error;
  Tally(r, all);
  r.steady = Classify(all, steady, true);
  r.during_swap = Classify(all, swaps, false);
  r.during_stage = Classify(all, stages, false);
  std::vector<double> compute;
  for (const Sample& s : all) {
    if (s.ok && s.t0 >= steady[0].begin && s.t1 <= steady[0].end) {
      compute.push_back(static_cast<double>(s.compute_ns) / 1e3);
    }
  }
  const LatencySummary compute_summary = Summarize(compute);
  r.steady_compute_p50_us = compute_summary.p50_us;
  r.steady_compute_p99_us = compute_summary.p99_us;
  return r;
}

// ------------------------------------------------------------------- raw

SideResult RunRaw(const Options& o, const PackageInfo& info, const WeightSets& sets,
                  const InferRequest& request) {
  SideResult r;
  r.ran = true;
  r.cycles_planned = o.cycles;
  r.swap_timeout_s = o.raw_timeout_s;
  const c10::Device device = ToC10Device(info.device);
  std::unique_ptr<AOTIModelPackageLoader> loader;
  std::vector<at::Tensor> inputs;
  // Device copies of both sets and the internal-name maps pointing at them.
  std::vector<at::Tensor> storage[2];
  std::unordered_map<std::string, at::Tensor*> by_internal[2];
  AOTIModelContainerRunner* runner = nullptr;
  try {
    loader = std::make_unique<AOTIModelPackageLoader>(
        info.path, "model", false, o.runners, static_cast<c10::DeviceIndex>(info.device.index));
    runner = loader->get_runner();
    for (const Tensor& t : request.inputs) {
      auto a = ToAten(t, info.device);
      if (!a.ok()) throw std::runtime_error(a.status().ToString());
      inputs.push_back(*a);
    }
    const auto to_fqn = runner->getConstantNamesToOriginalFQNs();
    for (int k = 0; k < 2; ++k) {
      storage[k].reserve(to_fqn.size());
      for (const auto& [internal, fqn] : to_fqn) {
        auto it = sets.set[k].find(fqn);
        if (it == sets.set[k].end()) continue;  // folded or not updatable
        storage[k].push_back(it->second.to(device).contiguous());
        by_internal[k][internal] = &storage[k].back();
      }
    }
  } catch (const std::exception& e) {
    r.swap_errors.push_back(std::string("raw loader setup: ") + e.what());
    return r;
  }
  auto run = [&] {
    std::vector<at::Tensor> out = loader->run(inputs);
    for (auto& t : out) t = t.to(at::kCPU);  // includes the device sync
    return out;
  };
  auto stage = [&](int k) {
    runner->update_constant_buffer(by_internal[k], /*use_inactive=*/true,
                                   /*validate_full_update=*/true);
    runner->run_const_fold(/*use_inactive=*/true);
  };

  // Reference outputs of each set, no load.
  std::vector<at::Tensor> ref[2];
  try {
    run();  // folds the compiled-in constants
    for (int k = 0; k < 2; ++k) {
      stage(k);
      runner->swap_constant_buffer();
      ref[k] = run();
    }
  } catch (const std::exception& e) {
    r.swap_errors.push_back(std::string("raw reference run: ") + e.what());
    return r;
  }
  int active = 1;

  std::mutex error_mu;
  std::string first_error;
  auto call = [&]() {
    Sample s;
    s.t0 = NowNs();
    try {
      std::vector<at::Tensor> out = run();
      s.t1 = NowNs();
      s.ok = true;
      s.wrong = o.check && !SameOutputs(out, ref[0]) && !SameOutputs(out, ref[1]);  // torn
    } catch (const std::exception& e) {
      s.t1 = NowNs();
      std::lock_guard lock(error_mu);
      if (first_error.empty()) first_error = e.what();
    }
    return s;
  };

  std::vector<Window> steady(1), swaps, stages;
  std::vector<Sample> all;
  auto clients = std::make_unique<Clients>(o.threads, call);
  Sleep(o.warmup_s);
  steady[0].begin = NowNs();
  Sleep(o.steady_s);
  steady[0].end = NowNs();
  const int64_t budget_end = NowNs() + static_cast<int64_t>(o.raw_budget_s * 1e9);
  for (int i = 0; i < o.cycles; ++i) {
    if (r.swaps_timed_out >= o.raw_max_timeouts || NowNs() > budget_end) {
      r.cycles_skipped = o.cycles - i;
      break;
    }
    const int next = 1 - active;
    Window st{NowNs(), 0};
    try {
      stage(next);
    } catch (const std::exception& e) {
      r.swap_errors.push_back(std::string("update/fold: ") + e.what());
      continue;
    }
    st.end = NowNs();
    stages.push_back(st);
    r.stage.Add(st.end - st.begin);
    Sleep(o.gap_ms / 1e3);

    // The swap, on its own thread so that a starved one can be bounded.
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::string swap_error;
    Window sw{NowNs(), 0};
    std::thread swapper([&] {
      try {
        runner->swap_constant_buffer();
      } catch (const std::exception& e) {
        swap_error = e.what();
      }
      const int64_t end = NowNs();
      std::lock_guard lock(mu);
      sw.end = end;
      done = true;
      cv.notify_all();
    });
    bool in_time;
    {
      std::unique_lock lock(mu);
      in_time = cv.wait_for(lock, std::chrono::duration<double>(o.raw_timeout_s),
                            [&] { return done; });
    }
    if (!in_time) {
      // Starved: stop the callers so that it can take the lock, then start
      // fresh ones for the next cycle.
      const int64_t gave_up = NowNs();
      clients->Stop();
      swapper.join();
      clients->AppendTo(all);
      clients = std::make_unique<Clients>(o.threads, call);
      ++r.swaps_timed_out;
      swaps.push_back({sw.begin, gave_up});
      std::fprintf(stderr, "swap_bench: raw swap %d did not return within %.0f s under load; "
                           "it returned %.0f ms after the callers stopped\n",
                   i, o.raw_timeout_s, (sw.end - gave_up) / 1e6);
    } else {
      swapper.join();
      swaps.push_back(sw);
      r.swap_call.Add(sw.end - sw.begin);
    }
    if (!swap_error.empty()) {
      r.swap_errors.push_back("swap_constant_buffer: " + swap_error);
      continue;
    }
    ++r.swaps_done;
    active = next;
    Sleep(o.gap_ms / 1e3);
  }
  clients->Stop();
  clients->AppendTo(all);
  clients.reset();
  r.first_error = first_error;
  Tally(r, all);
  r.steady = Classify(all, steady, true);
  r.during_swap = Classify(all, swaps, false);
  r.during_stage = Classify(all, stages, false);
  loader.reset();
  return r;
}

// ---------------------------------------------------------------- report

std::string SwapCell(const SideResult& r, const OpTimes& t, bool max) {
  if (!r.ran) return "-";
  if (max && r.swaps_timed_out > 0) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "> %.0f s (did not return)", r.swap_timeout_s);
    return buf;
  }
  if (t.ms.empty()) return "n/a";
  return Ms(max ? t.max() : t.median());
}

std::string LatCell(const ClassStats& c) {
  if (c.latency.count == 0) return "n/a";
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%.0f / %.0f (n=%zu)", c.latency.p50_us, c.latency.p99_us,
                c.latency.count);
  return buf;
}

std::string CyclesCell(const SideResult& r) {
  if (!r.ran) return "-";
  std::string s = std::to_string(r.swaps_done) + "/" + std::to_string(r.cycles_planned);
  if (r.swaps_timed_out > 0) {
    s += ", " + std::to_string(r.swaps_timed_out) + " did not return within " +
         std::to_string(static_cast<int>(r.swap_timeout_s)) + " s under load";
  }
  if (r.cycles_skipped > 0) s += ", " + std::to_string(r.cycles_skipped) + " skipped";
  if (!r.swap_errors.empty()) s += ", " + std::to_string(r.swap_errors.size()) + " errors";
  return s;
}

void PrintTable(const Options& o, const PackageInfo& info, const SideResult& p,
                const SideResult& raw) {
  std::printf("swap_bench: %s on %s, %d client threads, %zu runners, %d cycles\n\n",
              info.path.c_str(), info.device.ToString().c_str(), o.threads, o.runners, o.cycles);
  std::printf("| | pt2serve (RunnerPool + ConstantBufferManager) | raw AOTInductor (loader.run + "
              "swap_constant_buffer) |\n|---|---|---|\n");
  auto row = [](const char* what, const std::string& a, const std::string& b) {
    std::printf("| %s | %s | %s |\n", what, a.c_str(), b.c_str());
  };
  row("swaps completed", CyclesCell(p), CyclesCell(raw));
  row("swap call, median", SwapCell(p, p.swap_call, false), SwapCell(raw, raw.swap_call, false));
  row("swap call, max", SwapCell(p, p.swap_call, true), SwapCell(raw, raw.swap_call, true));
  row("requests paused (SwapResult.swap_time), median / max",
      p.swap_paused.ms.empty() ? "n/a" : Ms(p.swap_paused.median()) + " / " + Ms(p.swap_paused.max()),
      "-");
  row("wait for in-flight (SwapResult.wait_time), median / max",
      p.swap_wait.ms.empty() ? "n/a" : Ms(p.swap_wait.median()) + " / " + Ms(p.swap_wait.max()),
      "-");
  row("stage (Stage() / update+fold), median / max",
      p.stage.ms.empty() ? "n/a" : Ms(p.stage.median()) + " / " + Ms(p.stage.max()),
      raw.stage.ms.empty() ? "n/a" : Ms(raw.stage.median()) + " / " + Ms(raw.stage.max()));
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.0f", p.steady.rps);
  std::string p_rps = buf;
  std::snprintf(buf, sizeof(buf), "%.0f", raw.steady.rps);
  row("steady throughput, req/s", p_rps, raw.ran ? buf : "-");
  row("request p50 / p99 us, steady (no weight ops)", LatCell(p.steady), LatCell(raw.steady));
  row("request p50 / p99 us, overlapping a swap", LatCell(p.during_swap), LatCell(raw.during_swap));
  row("request p50 / p99 us, overlapping a stage", LatCell(p.during_stage),
      LatCell(raw.during_stage));
  row("failed requests", std::to_string(p.failed) + " of " + std::to_string(p.requests),
      raw.ran ? std::to_string(raw.failed) + " of " + std::to_string(raw.requests) : "-");
  row("wrong outputs (pt2serve: not the named version; raw: neither set)", std::to_string(p.wrong),
      raw.ran ? std::to_string(raw.wrong) : "-");
  std::printf("\n");
  // Targets (issue 4).
  const double infer_ms = p.steady_compute_p50_us / 1e3;
  const bool swap_ok = !p.swap_call.ms.empty() && p.swap_call.max() <= infer_ms + 1.0;
  const bool p99_ok = p.during_swap.latency.count > 0 &&
                      p.during_swap.latency.p99_us <= 2 * p.steady.latency.p99_us;
  std::printf("Target (issue 4): swap returns within one inference (%s, steady median compute; "
              "p99 %s) + 1 ms under load: max Swap() %s -> %s\n",
              Ms(infer_ms).c_str(), Ms(p.steady_compute_p99_us / 1e3).c_str(),
              p.swap_call.ms.empty() ? "n/a" : Ms(p.swap_call.max()).c_str(),
              swap_ok ? "MET" : "NOT MET");
  std::printf("Target (issue 4): p99 during swaps <= 2x steady p99: %.0f us vs 2 x %.0f us -> %s\n",
              p.during_swap.latency.p99_us, p.steady.latency.p99_us, p99_ok ? "MET" : "NOT MET");
  for (const auto& e : p.swap_errors) std::printf("pt2serve error: %s\n", e.c_str());
  for (const auto& e : raw.swap_errors) std::printf("raw error: %s\n", e.c_str());
  if (!p.first_error.empty()) std::printf("pt2serve first failed request: %s\n", p.first_error.c_str());
  if (!raw.first_error.empty()) std::printf("raw first failed request: %s\n", raw.first_error.c_str());
}

std::string JsonOps(const OpTimes& t) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "{\"n\":%zu,\"median_ms\":%.4f,\"max_ms\":%.4f}", t.ms.size(),
                t.median(), t.max());
  return buf;
}

std::string JsonClass(const ClassStats& c) {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "{\"n\":%zu,\"p50_us\":%.2f,\"p99_us\":%.2f,\"max_us\":%.2f,\"rps\":%.1f}",
                c.latency.count, c.latency.p50_us, c.latency.p99_us, c.latency.max_us, c.rps);
  return buf;
}

std::string JsonSide(const SideResult& r) {
  if (!r.ran) return "null";
  std::string errors = "[";
  for (size_t i = 0; i < r.swap_errors.size(); ++i) {
    errors += (i ? ",\"" : "\"") + JsonEscape(r.swap_errors[i]) + "\"";
  }
  errors += "]";
  return "{\"cycles\":" + std::to_string(r.cycles_planned) +
         ",\"swaps_done\":" + std::to_string(r.swaps_done) +
         ",\"swaps_timed_out\":" + std::to_string(r.swaps_timed_out) +
         ",\"cycles_skipped\":" + std::to_string(r.cycles_skipped) +
         ",\"timeout_s\":" + std::to_string(r.swap_timeout_s) + ",\"stage\":" + JsonOps(r.stage) +
         ",\"swap_call\":" + JsonOps(r.swap_call) + ",\"swap_paused\":" + JsonOps(r.swap_paused) +
         ",\"swap_wait\":" + JsonOps(r.swap_wait) + ",\"steady\":" + JsonClass(r.steady) +
         ",\"during_swap\":" + JsonClass(r.during_swap) +
         ",\"during_stage\":" + JsonClass(r.during_stage) +
         ",\"steady_compute_p50_us\":" + std::to_string(r.steady_compute_p50_us) +
         ",\"steady_compute_p99_us\":" + std::to_string(r.steady_compute_p99_us) +
         ",\"requests\":" + std::to_string(r.requests) + ",\"failed\":" + std::to_string(r.failed) +
         ",\"wrong\":" + std::to_string(r.wrong) + ",\"errors\":" + errors +
         ",\"first_error\":\"" + JsonEscape(r.first_error) + "\"}";
}

int Main(int argc, char** argv) {
  Options o;
#ifdef PT2SERVE_DEMO_MODEL
  o.package = PT2SERVE_DEMO_MODEL;
#endif
  CLI::App app{"swap_bench: weight hot-swap under load, pt2serve vs raw AOTInductor"};
  app.add_option("package", o.package, "The .pt2 package")->capture_default_str();
  app.add_option("--device", o.device, "auto, cpu, cuda:N, ...")->capture_default_str();
  app.add_option("--threads", o.threads, "Client threads")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--runners", o.runners, "Runners")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--cycles", o.cycles, "Stage+swap cycles")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", o.warmup_s, "Seconds of load before measuring")
      ->capture_default_str();
  app.add_option("--steady", o.steady_s, "Seconds of steady state (no weight ops)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--gap-ms", o.gap_ms, "Pause between stage, swap and the next cycle")
      ->capture_default_str();
  app.add_option("--raw-timeout-s", o.raw_timeout_s, "Give up waiting for a raw swap after this")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--raw-max-timeouts", o.raw_max_timeouts,
                 "Skip the remaining raw cycles after this many timed-out swaps")
      ->capture_default_str();
  app.add_option("--raw-budget-s", o.raw_budget_s, "Start no raw cycle after this many seconds")
      ->capture_default_str();
  app.add_flag("--skip-raw", o.skip_raw, "Only measure pt2serve");
  app.add_flag("--no-check{false}", o.check,
               "Do not compare outputs with the weights that computed them (less client CPU)");
  app.add_option("--json", o.json, "Append one JSON object with every number to this file");
  CLI11_PARSE(app, argc, argv);
  if (o.package.empty()) {
    std::fprintf(stderr, "swap_bench: no package given (and no demo model compiled in)\n");
    return 2;
  }

  ModelConfig config;
  config.name = "swap_bench";
  config.path = o.package;
  config.device = o.device;
  config.num_runners = o.runners;
  config.max_queue_size = static_cast<size_t>(std::max(1024, 4 * o.threads));
  auto loaded = Model::Load(config);
  if (!loaded.ok()) {
    std::fprintf(stderr, "swap_bench: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  std::shared_ptr<Model> model = std::move(loaded).value();
  const PackageInfo info = model->info();
  auto sets = MakeWeightSets(*model);
  if (!sets.ok()) {
    std::fprintf(stderr, "swap_bench: %s\n", sets.status().ToString().c_str());
    return 1;
  }
  InferRequest request;
  uint64_t seed = 1;
  for (const TensorSpec& spec : info.signature.inputs) {
    const Shape shape = ConcreteShape(spec.shape, 1);
    std::vector<std::byte> data = SyntheticData(spec.dtype, NumElements(shape), seed++);
    request.inputs.push_back(Tensor::Copy(spec.name, spec.dtype, shape, data.data(), data.size()));
  }

  std::fprintf(stderr, "swap_bench: pt2serve: %d threads, %zu runners, %d cycles...\n", o.threads,
               o.runners, o.cycles);
  SideResult p = RunPt2serve(o, *model, *sets, request);
  model.reset();  // free its memory and threads before the raw run
  SideResult raw;
  if (!o.skip_raw) {
    std::fprintf(stderr, "swap_bench: raw AOTInductor: %d threads, %zu runners, %d cycles...\n",
                 o.threads, o.runners, o.cycles);
    raw = RunRaw(o, info, *sets, request);
  }
  PrintTable(o, info, p, raw);
  if (!o.json.empty()) {
    char head[512];
    std::snprintf(head, sizeof(head),
                  "{\"package\":\"%s\",\"device\":\"%s\",\"threads\":%d,\"runners\":%zu,"
                  "\"cycles\":%d,",
                  JsonEscape(info.path).c_str(), info.device.ToString().c_str(), o.threads,
                  o.runners, o.cycles);
    const std::string line =
        std::string(head) + "\"pt2serve\":" + JsonSide(p) + ",\"raw\":" + JsonSide(raw) + "}";
    if (!AppendLine(o.json, line)) {
      std::fprintf(stderr, "swap_bench: cannot write %s\n", o.json.c_str());
      return 2;
    }
  }
  const bool bad = p.failed > 0 || p.wrong > 0 || !p.swap_errors.empty() ||
                   p.swaps_done != p.cycles_planned;
  return bad ? 1 : 0;
}

}  // namespace
}  // namespace pt2serve::bench

int main(int argc, char** argv) { return pt2serve::bench::Main(argc, argv); }
