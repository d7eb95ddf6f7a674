// FleetRollout: `pt2ctl weights rollout` and `pt2ctl weights rollback
// --endpoints`: one weight change across every replica of a deployment, in
// two phases and without any consensus of our own.
//
//   0. inspect   GetConstantBufferStatus on every replica (in parallel): the
//                ACTIVE version each one serves now. Replicas already on the
//                target version are skipped (a re-run converges).
//   1. stage     push the weight set to every other replica in parallel
//                (bounded by stage_timeout each), then verify that every one
//                reports it STAGED under the version with the same sha256.
//                Any failure or timeout: ABORT everywhere (free the staged
//                set where it is STAGED under our version) and stop. Nothing
//                served changes.
//   2. commit    SwapConstantBuffer on every staged replica in parallel, as a
//                compare-and-swap (staged == version, active == what phase 0
//                saw; already-active counts as done), retried on transport
//                errors only. The mixed window is this fan-out; its width is
//                the reported commit skew (latest minus earliest commit).
//
// Every replica gets its own AdminClient and thread; the result is one row per
// replica. Thread-safety: Run* are not reentrant; call from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "tools/pt2ctl/admin_client.h"
#include "tools/pt2ctl/outcome.h"

namespace pt2serve::ctl {

struct FleetOptions {
  std::vector<std::string> endpoints;  // admin addresses, one per replica
  // Token, TLS (tls_server_name for IP endpoints); admin_address and timeout
  // are set per replica and phase.
  ClientOptions client;
  std::chrono::milliseconds inspect_timeout{10'000};
  std::chrono::milliseconds stage_timeout{600'000};
  std::chrono::milliseconds commit_timeout{30'000};
  int commit_attempts = 3;  // per replica; only transport errors are retried
  // Called (from worker threads, serialised) with one progress line.
  std::function<void(const std::string&)> progress;
};

struct RolloutSpec {
  std::string model;
  std::string file;     // local .safetensors, or with server_side a repository path
  std::string version;  // required
  std::string sha256;   // server_side: required unless a local copy exists at `file`
  bool server_side = false;
  uint64_t chunk_bytes = 2 << 20;
};

struct ReplicaReport {
  std::string endpoint;
  std::string before;         // ACTIVE version seen in phase 0
  std::string stage = "-";    // staged | already active | failed | not started
  double stage_seconds = 0;
  std::string staged_sha256;  // as the replica reports it
  std::string commit = "-";   // committed | already active | failed | aborted | abort failed
  int commit_attempts = 0;
  double commit_ms = 0;             // duration of the successful commit RPC
  int64_t committed_at_us = 0;      // wall clock (us since epoch) when it answered
  std::string after;                // ACTIVE version at the end ("" if unknown)
  std::string error;                // first error on this replica
};

struct FleetResult {
  // committed: every replica serves the version; aborted: nothing changed;
  // partial: some replicas committed and others did not (retry the rollout,
  // or roll the committed ones back).
  // For rollback: rolled back | partial | failed.
  std::string result;
  std::string sha256;
  double commit_skew_ms = 0;  // over replicas committed in this run
  double seconds = 0;
  std::vector<ReplicaReport> replicas;
  bool ok() const { return result == "committed" || result == "rolled back"; }
};

class FleetRollout {
 public:
  explicit FleetRollout(FleetOptions options) : options_(std::move(options)) {}

  FleetResult Rollout(const RolloutSpec& spec);
  // Rollback on every replica in parallel (each swaps back to its PREVIOUS).
  FleetResult Rollback(const std::string& model);

  // --- pure helpers (unit-tested) ---
  // "host:port" for every address `name` resolves to (IPv6 bracketed),
  // sorted and de-duplicated. NOT_FOUND when it resolves to none.
  static StatusOr<std::vector<std::string>> ResolveHeadless(const std::string& name_and_port);
  // "target:port" for every SRV record of `name` (e.g.
  // _grpc-admin._tcp.NAME-admin.NS.svc.cluster.local: one per ready pod of a
  // headless Service), sorted and de-duplicated. NOT_FOUND when there is none.
  static StatusOr<std::vector<std::string>> ResolveSrv(const std::string& name);
  // The SRV answers of one DNS response message (what ResolveSrv parses).
  static StatusOr<std::vector<std::string>> ParseSrvAnswer(const unsigned char* message,
                                                           int length);
  // Latest minus earliest of the non-zero times, in ms (0 for fewer than 2).
  static double SkewMs(const std::vector<int64_t>& times_us);
  // Human-readable table and the --json object.
  static std::string Table(const FleetResult& result);
  static std::string Json(const FleetResult& result, const std::string& model,
                          const std::string& version);

 private:
  ClientOptions ClientFor(const std::string& endpoint, std::chrono::milliseconds timeout) const;
  void Progress(const std::string& line);
  // Frees the staged set on every replica where it is STAGED as `version`.
  void Abort(const RolloutSpec& spec, FleetResult* result);

  FleetOptions options_;
  std::mutex progress_mu_;
};

}  // namespace pt2serve::ctl
