#include "tests/support/hot_swap_race.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <atomic>
#include <mutex>
#include <thread>

#include "runtime/constant_buffer_manager.h"

namespace pt2serve::testing {
namespace {

double Millis(std::chrono::nanoseconds d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

std::string Describe(std::vector<double> v) {
  if (v.empty()) return "n/a";
  std::sort(v.begin(), v.end());
  return "median " + std::to_string(v[v.size() / 2]) + " ms, max " + std::to_string(v.back()) +
         " ms";
}

}  // namespace

std::string HotSwapRaceResult::Summary() const {
  std::string counts;
  for (const auto& [version, n] : responses) counts += " " + version + "=" + std::to_string(n);
  return "swap (requests paused) " + Describe(swap_ms) + "; drain before swap " +
         Describe(drain_ms) + "; stage+fold " + Describe(stage_ms) + "; responses" + counts;
}

HotSwapRaceResult RunHotSwapRace(Model& model, const std::map<std::string, Reference>& refs,
                                 const std::map<std::string, std::vector<Tensor>>& sets,
                                 const HotSwapRaceOptions& options) {
  HotSwapRaceResult result;
  ConstantBufferManager& weights = model.weights();
  const Reference& any = refs.at("initial");
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0}, wrong{0}, unknown{0};
  std::mutex mu;
  std::vector<std::thread> clients;
  for (int c = 0; c < options.clients; ++c) {
    clients.emplace_back([&] {
      std::map<std::string, int> local;
      while (!stop) {
        InferRequest request;
        request.inputs = any.inputs;
        auto response = model.Infer(request);
        if (!response.ok()) {
          ++failed;
          continue;
        }
        auto ref = refs.find(response->weights_version);
        if (ref == refs.end()) {
          ++unknown;
          continue;
        }
        ++local[response->weights_version];
        for (const Tensor& expected : ref->second.outputs) {
          const int idx = model.signature().OutputIndex(expected.name);
          const std::string diff =
              idx < 0 ? "missing output " + expected.name
                      : CompareTensors(response->outputs[idx], expected, options.tolerance,
                                       options.tolerance);
          if (!diff.empty() && wrong++ == 0) {
            std::lock_guard lock(mu);
            result.first_problem = response->weights_version + ": " + diff;
          }
        }
      }
      std::lock_guard lock(mu);
      for (const auto& [v, n] : local) result.responses[v] += n;
    });
  }

  auto note = [&](const std::string& problem) {
    std::lock_guard lock(mu);
    if (result.first_problem.empty()) result.first_problem = problem;
  };
  auto record = [&](const SwapResult& s) {
    result.swap_ms.push_back(Millis(s.swap_time));
    result.drain_ms.push_back(Millis(s.wait_time));
  };
  std::vector<std::string> versions;
  for (const auto& [version, _] : sets) versions.push_back(version);
  for (int cycle = 0; cycle < options.cycles; ++cycle) {
    const std::string& version = versions[cycle % versions.size()];
    StageOptions stage;
    stage.version = version;
    const auto t0 = std::chrono::steady_clock::now();
    Status staged = weights.Stage(sets.at(version), stage);
    result.stage_ms.push_back(Millis(std::chrono::steady_clock::now() - t0));
    if (!staged.ok()) {
      note("stage " + version + ": " + staged.ToString());
      break;
    }
    auto swapped = weights.Swap(version);
    if (!swapped.ok()) {
      note("swap " + version + ": " + swapped.status().ToString());
      break;
    }
    record(*swapped);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // serve each version a while
    if (options.rollback_every > 0 && cycle % options.rollback_every == options.rollback_every - 1) {
      auto back = weights.Rollback();
      auto forth = back.ok() ? weights.Rollback() : back;
      auto freed = forth.ok() ? weights.FreeInactive() : StatusOr<size_t>(forth.status());
      if (!freed.ok()) {
        note("rollback/free: " + freed.status().ToString());
        break;
      }
      record(*back);
      record(*forth);
    }
  }
  stop = true;
  for (auto& t : clients) t.join();
  result.failed = failed;
  result.wrong = wrong;
  result.unknown_version = unknown;
  return result;
}

void ExpectCleanRace(const HotSwapRaceResult& race, const std::vector<std::string>& served) {
  INFO("first problem: " << race.first_problem);
  CHECK(race.first_problem.empty());
  CHECK(race.failed == 0);
  CHECK(race.wrong == 0);
  CHECK(race.unknown_version == 0);
  for (const auto& version : served) {
    INFO("version " << version);
    CHECK(race.responses.count(version) == 1);
  }
}

}  // namespace pt2serve::testing
