// ServerCheck: `pt2ctl check`, the `helm test` of the chart: is the server
// ready, and does MODEL answer one KServe v2 inference correctly shaped?
//
//   1. ServerReady must be true (the readiness grpc.health.v1 reports too);
//   2. ModelMetadata(MODEL) gives the signature;
//   3. ModelInfer with zeros (dynamic dimensions as 1) must return every
//      declared output with the declared rank and matching size, and no
//      NaN/Inf in floating-point outputs.
//
// Uses the inference address and its TLS settings only (no admin token).
// Thread-safety: a free function; no shared state.
#pragma once

#include <string>

#include "tools/pt2ctl/admin_client.h"
#include "tools/pt2ctl/outcome.h"

namespace pt2serve::ctl {

struct CheckReport {
  std::string model;
  std::string weights_version;  // from the response's parameters
  size_t outputs = 0;
  double infer_ms = 0;
};

// Runs the check; a failed step is an Outcome naming it (exit 1 when the
// server answered wrongly, 3 when it is unreachable).
Outcome CheckServer(const ClientOptions& options, const std::string& model, CheckReport* report);

}  // namespace pt2serve::ctl
