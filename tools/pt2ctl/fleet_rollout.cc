#include "tools/pt2ctl/fleet_rollout.h"

#include <arpa/nameser.h>
#include <netdb.h>
#include <resolv.h>
#include <sys/socket.h>

#include <arpa/inet.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <set>
#include <thread>

#include "common/sha256.h"
#include "tools/pt2ctl/table.h"
#include "tools/pt2ctl/weight_pusher.h"

namespace pt2serve::ctl {
namespace {

namespace v1 = pt2serve::v1;
using Clock = std::chrono::steady_clock;

// Runs fn(i) for i in [0, n) on n threads and waits for all.
void ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (size_t i = 0; i < n; ++i) threads.emplace_back(fn, i);
  for (auto& t : threads) t.join();
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t WallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string ErrorText(const Outcome& o) {
  return o.code().empty() ? o.message() : o.code() + ": " + o.message();
}

// Transport failures a commit may be retried after (the server did not answer,
// or its answer was lost); a refusal (FAILED_PRECONDITION...) is final.
bool Retryable(const Outcome& o) {
  return o.exit_code() == ExitCode::kUnreachable || o.code() == "UNAVAILABLE" ||
         o.code() == "DEADLINE_EXCEEDED";
}

std::string Fixed(double value, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, value);
  return buf;
}

}  // namespace

ClientOptions FleetRollout::ClientFor(const std::string& endpoint,
                                      std::chrono::milliseconds timeout) const {
  ClientOptions o = options_.client;
  o.admin_address = endpoint;
  o.timeout = timeout;
  return o;
}

void FleetRollout::Progress(const std::string& line) {
  if (!options_.progress) return;
  std::lock_guard lock(progress_mu_);
  options_.progress(line);
}

FleetResult FleetRollout::Rollout(const RolloutSpec& spec) {
  const auto started = Clock::now();
  const size_t n = options_.endpoints.size();
  FleetResult result;
  result.replicas.resize(n);
  for (size_t i = 0; i < n; ++i) result.replicas[i].endpoint = options_.endpoints[i];
  auto finish = [&](std::string verdict) {
    result.result = std::move(verdict);
    result.seconds = SecondsSince(started);
    return result;
  };

  // The checksum every replica must report for the staged set. Server-side:
  // of the file's bytes (--sha256, else a local copy). Streamed: of the tensor
  // data as WeightPusher sends it, known once a push computed it.
  std::string want_sha;
  if (spec.server_side) {
    want_sha = spec.sha256;
    if (want_sha.empty()) {
      auto local = Sha256::HexOfFile(spec.file);
      if (!local.ok()) {
        for (auto& r : result.replicas) {
          r.error = "rollout --server-side needs --sha256 (or a local copy of '" + spec.file +
                    "') so every replica can be checked to stage the same bytes";
        }
        return finish("aborted");
      }
      want_sha = *local;
    }
  }
  std::vector<std::string> pushed_sha(n);

  // Phase 0: what every replica serves now.
  ParallelFor(n, [&](size_t i) {
    auto& r = result.replicas[i];
    AdminClient client(ClientFor(r.endpoint, options_.inspect_timeout));
    v1::ConstantBufferStatus status;
    if (Outcome o = client.GetStatus(spec.model, &status); !o.ok()) {
      r.error = "inspect: " + ErrorText(o);
      r.stage = "not started";
      return;
    }
    r.before = status.active().version();
    r.after = r.before;
  });
  if (std::any_of(result.replicas.begin(), result.replicas.end(),
                  [](const ReplicaReport& r) { return !r.error.empty(); })) {
    return finish("aborted");  // nothing was staged anywhere
  }

  // Phase 1: stage where the version is not active yet, then verify.
  std::atomic<size_t> staged_count{0};
  const size_t to_stage = static_cast<size_t>(
      std::count_if(result.replicas.begin(), result.replicas.end(),
                    [&](const ReplicaReport& r) { return r.before != spec.version; }));
  ParallelFor(n, [&](size_t i) {
    auto& r = result.replicas[i];
    if (r.before == spec.version) {
      r.stage = "already active";
      return;
    }
    const auto t0 = Clock::now();
    AdminClient client(ClientFor(r.endpoint, options_.stage_timeout));
    WeightPusher pusher(client);
    PushOptions push;
    push.model = spec.model;
    push.file = spec.file;
    push.version = spec.version;
    push.server_side = spec.server_side;
    if (spec.server_side) push.sha256 = want_sha;
    push.chunk_bytes = spec.chunk_bytes;
    PushResult pushed;
    const Outcome o = pusher.Push(push, &pushed);
    r.stage_seconds = SecondsSince(t0);
    if (!o.ok()) {
      r.stage = "failed";
      r.error = "stage: " + ErrorText(o);
      Progress("stage  " + r.endpoint + ": FAILED after " + Fixed(r.stage_seconds, 2) + " s: " +
               ErrorText(o));
      return;
    }
    pushed_sha[i] = pushed.sha256;
    // Verify what the replica itself reports.
    AdminClient checker(ClientFor(r.endpoint, options_.inspect_timeout));
    v1::ConstantBufferStatus status;
    if (Outcome s = checker.GetStatus(spec.model, &status); !s.ok()) {
      r.stage = "failed";
      r.error = "verify: " + ErrorText(s);
      return;
    }
    r.staged_sha256 = status.inactive().sha256();
    if (status.inactive().state() != v1::STAGED || status.inactive().version() != spec.version) {
      r.stage = "failed";
      r.error = "verify: the inactive buffer holds '" + status.inactive().version() +
                "', not the staged '" + spec.version + "'";
      return;
    }
    r.stage = "staged";
    Progress("stage  " + r.endpoint + ": staged '" + spec.version + "' in " +
             Fixed(r.stage_seconds, 2) + " s (" + std::to_string(++staged_count) + "/" +
             std::to_string(to_stage) + ")");
  });
  if (!spec.server_side) {
    for (const auto& sha : pushed_sha) {
      if (!sha.empty()) want_sha = sha;
    }
  }
  result.sha256 = want_sha;
  for (auto& r : result.replicas) {
    if (r.stage != "staged") continue;
    if (r.staged_sha256.empty() || r.staged_sha256 != want_sha) {
      r.stage = "failed";
      r.error = "verify: staged sha256 '" + r.staged_sha256 + "' differs from '" + want_sha + "'";
    }
  }
  if (std::any_of(result.replicas.begin(), result.replicas.end(),
                  [](const ReplicaReport& r) { return r.stage == "failed"; })) {
    Abort(spec, &result);
    return finish("aborted");
  }

  // Phase 2: commit everywhere at once (compare-and-swap, retry-safe).
  ParallelFor(n, [&](size_t i) {
    auto& r = result.replicas[i];
    if (r.stage != "staged") return;
    AdminClient client(ClientFor(r.endpoint, options_.commit_timeout));
    for (r.commit_attempts = 1; r.commit_attempts <= options_.commit_attempts;
         ++r.commit_attempts) {
      v1::SwapResponse swap;
      const auto t0 = Clock::now();
      const Outcome o = client.Swap(spec.model, spec.version, &swap, r.before);
      if (o.ok()) {
        r.commit_ms = SecondsSince(t0) * 1e3;
        r.committed_at_us = WallMicros();
        r.commit = swap.already_active() ? "already active" : "committed";
        r.after = swap.active_version();
        Progress("commit " + r.endpoint + ": '" + r.after + "' active (" + r.commit + ", " +
                 Fixed(r.commit_ms, 1) + " ms)");
        return;
      }
      r.error = "commit: " + ErrorText(o);
      if (!Retryable(o)) break;
    }
    r.commit_attempts = std::min(r.commit_attempts, options_.commit_attempts);
    r.commit = "failed";
    Progress("commit " + r.endpoint + ": FAILED: " + r.error);
  });
  std::vector<int64_t> times;
  bool all = true;
  for (const auto& r : result.replicas) {
    if (r.committed_at_us) times.push_back(r.committed_at_us);
    all = all && (r.stage == "already active" || r.commit == "committed" ||
                  r.commit == "already active");
  }
  result.commit_skew_ms = SkewMs(times);
  return finish(all ? "committed" : "partial");
}

void FleetRollout::Abort(const RolloutSpec& spec, FleetResult* result) {
  ParallelFor(result->replicas.size(), [&](size_t i) {
    auto& r = result->replicas[i];
    if (r.stage == "already active" || r.stage == "not started") return;
    AdminClient client(ClientFor(r.endpoint, options_.commit_timeout));
    v1::ConstantBufferStatus status;
    if (Outcome o = client.GetStatus(spec.model, &status); !o.ok()) {
      // Unreachable (killed, stopped): it serves what it served; a set it
      // may still stage later is never committed by this rollout.
      r.commit = "abort failed";
      r.after.clear();  // unknown
      if (r.error.empty()) r.error = "abort: " + ErrorText(o);
      return;
    }
    r.after = status.active().version();
    if (status.inactive().state() == v1::STAGED && status.inactive().version() == spec.version) {
      v1::FreeInactiveResponse freed;
      if (Outcome o = client.FreeInactive(spec.model, &freed); !o.ok()) {
        r.commit = "abort failed";
        if (r.error.empty()) r.error = "abort: " + ErrorText(o);
        return;
      }
    }
    r.commit = "aborted";
    Progress("abort  " + r.endpoint + ": staged set released, serving '" + r.after + "'");
  });
}

FleetResult FleetRollout::Rollback(const std::string& model) {
  const auto started = Clock::now();
  FleetResult result;
  result.replicas.resize(options_.endpoints.size());
  ParallelFor(result.replicas.size(), [&](size_t i) {
    auto& r = result.replicas[i];
    r.endpoint = options_.endpoints[i];
    AdminClient client(ClientFor(r.endpoint, options_.commit_timeout));
    v1::SwapResponse swap;
    const auto t0 = Clock::now();
    r.commit_attempts = 1;
    if (Outcome o = client.Rollback(model, &swap); !o.ok()) {
      r.commit = "failed";
      r.error = "rollback: " + ErrorText(o);
      return;
    }
    r.commit_ms = SecondsSince(t0) * 1e3;
    r.committed_at_us = WallMicros();
    r.before = swap.previous_version();
    r.after = swap.active_version();
    r.commit = "rolled back";
  });
  std::vector<int64_t> times;
  size_t done = 0;
  for (const auto& r : result.replicas) {
    if (r.committed_at_us) times.push_back(r.committed_at_us), ++done;
  }
  result.commit_skew_ms = SkewMs(times);
  result.result = done == result.replicas.size() ? "rolled back" : done ? "partial" : "failed";
  result.seconds = SecondsSince(started);
  return result;
}

StatusOr<std::vector<std::string>> FleetRollout::ResolveHeadless(const std::string& name_and_port) {
  const auto colon = name_and_port.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == name_and_port.size()) {
    return InvalidArgument("--headless '" + name_and_port + "': expected NAME:PORT");
  }
  const std::string name = name_and_port.substr(0, colon);
  const std::string port = name_and_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(name.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return NotFound("--headless '" + name_and_port + "': " + gai_strerror(rc));
  }
  std::set<std::string> endpoints;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char host[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, host, sizeof(host));
      endpoints.insert(std::string(host) + ":" + port);
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, host,
                sizeof(host));
      endpoints.insert("[" + std::string(host) + "]:" + port);
    }
  }
  freeaddrinfo(found);
  if (endpoints.empty()) return NotFound("--headless '" + name_and_port + "' has no addresses");
  return std::vector<std::string>(endpoints.begin(), endpoints.end());
}

StatusOr<std::vector<std::string>> FleetRollout::ParseSrvAnswer(const unsigned char* message,
                                                                int length) {
  ns_msg msg;
  if (ns_initparse(message, length, &msg) < 0) return InvalidArgument("malformed DNS answer");
  std::set<std::string> endpoints;
  for (int i = 0; i < ns_msg_count(msg, ns_s_an); ++i) {
    ns_rr rr;
    if (ns_parserr(&msg, ns_s_an, i, &rr) < 0) return InvalidArgument("malformed DNS record");
    if (ns_rr_type(rr) != ns_t_srv || ns_rr_rdlen(rr) < 7) continue;
    const unsigned char* rdata = ns_rr_rdata(rr);
    const unsigned port = (rdata[4] << 8) | rdata[5];
    char target[NS_MAXDNAME];
    if (dn_expand(ns_msg_base(msg), ns_msg_end(msg), rdata + 6, target, sizeof(target)) < 0) {
      return InvalidArgument("malformed SRV target");
    }
    std::string host = target;
    if (!host.empty() && host.back() == '.') host.pop_back();
    if (!host.empty() && port != 0) endpoints.insert(host + ":" + std::to_string(port));
  }
  return std::vector<std::string>(endpoints.begin(), endpoints.end());
}

StatusOr<std::vector<std::string>> FleetRollout::ResolveSrv(const std::string& name) {
  unsigned char answer[NS_PACKETSZ * 16];
  struct __res_state state{};
  if (res_ninit(&state) != 0) return Unavailable("--dns-srv: cannot initialise the resolver");
  const int length = res_nquery(&state, name.c_str(), ns_c_in, ns_t_srv, answer, sizeof(answer));
  res_nclose(&state);
  if (length < 0) return NotFound("--dns-srv '" + name + "': no SRV records");
  PT2_ASSIGN_OR_RETURN(auto endpoints, ParseSrvAnswer(answer, length));
  if (endpoints.empty()) return NotFound("--dns-srv '" + name + "': no SRV records");
  return endpoints;
}

double FleetRollout::SkewMs(const std::vector<int64_t>& times_us) {
  std::vector<int64_t> t;
  for (int64_t v : times_us) {
    if (v != 0) t.push_back(v);
  }
  if (t.size() < 2) return 0;
  const auto [lo, hi] = std::minmax_element(t.begin(), t.end());
  return static_cast<double>(*hi - *lo) / 1e3;
}

std::string FleetRollout::Table(const FleetResult& result) {
  ctl::Table table({"REPLICA", "BEFORE", "STAGE", "STAGE_S", "SHA256", "COMMIT", "COMMIT_MS",
                    "ACTIVE", "ERROR"});
  for (const auto& r : result.replicas) {
    table.AddRow({r.endpoint, r.before.empty() ? "-" : r.before, r.stage,
                  r.stage_seconds > 0 ? Fixed(r.stage_seconds, 2) : "-",
                  r.staged_sha256.empty() ? "-" : r.staged_sha256.substr(0, 12), r.commit,
                  r.commit_ms > 0 ? Fixed(r.commit_ms, 1) : "-", r.after.empty() ? "?" : r.after,
                  r.error});
  }
  return table.ToString();
}

std::string FleetRollout::Json(const FleetResult& result, const std::string& model,
                               const std::string& version) {
  std::string out = "{\"model\":\"" + JsonEscape(model) + "\",\"version\":\"" +
                    JsonEscape(version) + "\",\"result\":\"" + result.result +
                    "\",\"sha256\":\"" + result.sha256 + "\",\"commit_skew_ms\":" +
                    Fixed(result.commit_skew_ms, 3) + ",\"seconds\":" +
                    Fixed(result.seconds, 3) + ",\"replicas\":[";
  for (size_t i = 0; i < result.replicas.size(); ++i) {
    const auto& r = result.replicas[i];
    if (i) out += ",";
    out += "{\"endpoint\":\"" + JsonEscape(r.endpoint) + "\",\"before\":\"" +
           JsonEscape(r.before) + "\",\"stage\":\"" + r.stage + "\",\"stage_seconds\":" +
           Fixed(r.stage_seconds, 3) + ",\"staged_sha256\":\"" + r.staged_sha256 +
           "\",\"commit\":\"" + r.commit + "\",\"commit_attempts\":" +
           std::to_string(r.commit_attempts) + ",\"commit_ms\":" + Fixed(r.commit_ms, 3) +
           ",\"committed_at_us\":" + std::to_string(r.committed_at_us) + ",\"active\":\"" +
           JsonEscape(r.after) + "\",\"error\":\"" + JsonEscape(r.error) + "\"}";
  }
  return out + "]}";
}

}  // namespace pt2serve::ctl
