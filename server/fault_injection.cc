#include "server/fault_injection.h"

#include <array>
#include <atomic>
#include <charconv>
#include <memory>
#include <optional>
#include <sstream>

#include "runtime/constant_buffer_manager.h"
#include "runtime/model.h"
#include "server/logging.h"

namespace pt2serve::server {
namespace {

// FaultInjection's OP names, and the ConstantBufferManager step each one fails.
constexpr std::array<std::pair<std::string_view, std::string_view>, 3> kOps{{
    {"stage_alloc", "write"}, {"fold", "fold"}, {"swap", "swap"}}};

std::optional<uint64_t> ParseCount(std::string_view text) {
  uint64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value == 0) return std::nullopt;
  return value;
}

Status Injected(std::string_view op, const std::string& model, size_t replica, uint64_t call) {
  const std::string what = "injected fault (" + std::string(kFaultInjectEnv) + " " +
                           std::string(op) + ", call " + std::to_string(call) + ", replica " +
                           std::to_string(replica) + ")";
  Logger("server")->warn("model '{}': {}", model, what);
  if (op == "stage_alloc") {
    return ResourceExhausted(what + ": cannot allocate the inactive weight buffer");
  }
  if (op == "fold") return Internal(what + ": constant folding failed");
  return Internal(what + ": swapping the constant buffers failed");
}

}  // namespace

StatusOr<FaultInjection> FaultInjection::Parse(std::string_view spec) {
  FaultInjection result;
  result.spec_ = std::string(spec);
  std::stringstream entries{std::string(spec)};
  for (std::string entry; std::getline(entries, entry, ',');) {
    if (entry.empty()) continue;
    const auto bad = [&](const std::string& why) {
      return InvalidArgument(std::string(kFaultInjectEnv) + " entry '" + entry + "': " + why +
                             " (expected OP:MODEL[:N|N-M|N-], OP one of stage_alloc, fold, "
                             "swap)");
    };
    Fault fault;
    const auto colon = entry.find(':');
    if (colon == std::string::npos) return bad("no model name");
    fault.op = entry.substr(0, colon);
    bool known = false;
    for (const auto& [name, step] : kOps) known = known || fault.op == name;
    if (!known) return bad("unknown OP '" + fault.op + "'");
    std::string rest = entry.substr(colon + 1);
    const auto calls_at = rest.find(':');
    fault.model = rest.substr(0, calls_at);
    if (fault.model.empty()) return bad("no model name");
    if (calls_at != std::string::npos) {
      const std::string calls = rest.substr(calls_at + 1);
      const auto dash = calls.find('-');
      auto first = ParseCount(std::string_view(calls).substr(0, dash));
      if (!first) return bad("bad CALLS '" + calls + "'");
      fault.first = *first;
      if (dash == std::string::npos) {
        fault.last = *first;
      } else if (dash + 1 < calls.size()) {
        auto last = ParseCount(std::string_view(calls).substr(dash + 1));
        if (!last || *last < *first) return bad("bad CALLS '" + calls + "'");
        fault.last = *last;
      }
    }
    result.faults_.push_back(std::move(fault));
  }
  return result;
}

void FaultInjection::Install(Model& model) const {
  std::vector<Fault> mine;
  for (const Fault& f : faults_) {
    if (f.model == model.config().name) mine.push_back(f);
  }
  if (mine.empty()) return;
  // One call counter per OP for this loaded model (shared by the hook's copies).
  auto calls = std::make_shared<std::array<std::atomic<uint64_t>, kOps.size()>>();
  model.weights().SetFaultHookForTest(
      [mine = std::move(mine), calls, name = model.config().name](std::string_view step,
                                                                   size_t replica) -> Status {
        for (size_t i = 0; i < kOps.size(); ++i) {
          if (kOps[i].second != step) continue;
          const uint64_t call = ++(*calls)[i];
          for (const Fault& f : mine) {
            if (f.op == kOps[i].first && call >= f.first && call <= f.last) {
              return Injected(f.op, name, replica, call);
            }
          }
        }
        return Status::Ok();
      });
}

}  // namespace pt2serve::server
