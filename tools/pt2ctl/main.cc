// pt2ctl: command-line client for a running pt2serve daemon.
//
//   pt2ctl check [--model M]          (ready + one inference; the chart's helm test)
//   pt2ctl models list
//   pt2ctl models load NAME [PACKAGE_PATH] [--device D] [--runners N] [--queue N]
//       [--cpu-threads N] [--input N:DTYPE:DIMS ... --output N:DTYPE:DIMS ... [--max-batch N]]
//   pt2ctl models unload NAME
//   pt2ctl models inspect PACKAGE.pt2     (local, no server)
//   pt2ctl weights push MODEL FILE.safetensors [--version L] [--swap] [--server-side]
//   pt2ctl weights swap MODEL [--expect VERSION]
//   pt2ctl weights rollback MODEL [--endpoints A,B,... | --headless NAME:PORT]
//   pt2ctl weights rollout MODEL FILE --version V
//       (--endpoints A,B,... | --headless NAME:PORT | --dns-srv SRVNAME)
//       [--server-side] [--sha256 H] [--stage-timeout S] [--commit-timeout S]
//   pt2ctl weights free-inactive MODEL
//   pt2ctl weights status MODEL
//
// Exit codes: see kFooter (and README.md).
#include <CLI/CLI.hpp>
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <tuple>
#include <vector>

#include "server/tensor_codec.h"
#include "tools/pt2ctl/admin_client.h"
#include "tools/pt2ctl/fleet_rollout.h"
#include "tools/pt2ctl/inspect.h"
#include "tools/pt2ctl/outcome.h"
#include "tools/pt2ctl/progress_bar.h"
#include "tools/pt2ctl/server_check.h"
#include "tools/pt2ctl/table.h"
#include "tools/pt2ctl/weight_pusher.h"

namespace pt2serve::ctl {
namespace {

namespace v1 = pt2serve::v1;

constexpr const char* kTokenEnv = "PT2SERVE_ADMIN_TOKEN";
constexpr double kDefaultTimeoutS = 30;
constexpr double kLongTimeoutS = 300;  // pushes and loads

constexpr const char* kFooter = R"(
Admin token: --token, else --token-file, else $PT2SERVE_ADMIN_TOKEN (sent as
'authorization: Bearer <token>'). `models list` needs none.

Exit codes:
  0  success
  1  the server refused the request; stderr: 'pt2ctl: <GRPC_CODE>: <message>'
  2  usage or local error (bad flags, unreadable or invalid file, missing token)
  3  the server is unreachable (connection refused or lost, deadline while connecting)
With --json, results and errors are one JSON object on stdout (proto field names).)";

// Options shared by every command.
struct Globals {
  std::string admin_address = "127.0.0.1:8003";
  std::string address = "127.0.0.1:8001";
  std::string token;
  std::string token_file;
  std::string tls_ca, tls_cert, tls_key;  // files, admin channel
  std::string tls_server_name;            // admin certificate name for IP endpoints
  std::string inference_tls_ca, inference_tls_cert, inference_tls_key;  // files
  bool json = false;
  std::optional<double> timeout_s;
};

// ------------------------------------------------------------------ output

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) return "{}";
  return out;
}

// "2024-06-01 12:00:00 UTC", "-" for an unset time.
std::string FormatTime(const google::protobuf::Timestamp& ts) {
  if (ts.seconds() == 0 && ts.nanos() == 0) return "-";
  const std::time_t t = static_cast<std::time_t>(ts.seconds());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string Or(const std::string& s, const char* fallback = "-") {
  return s.empty() ? fallback : s;
}

std::string_view StateName(v1::BufferState state) {
  switch (state) {
    case v1::EMPTY: return "EMPTY";
    case v1::STAGED: return "STAGED";
    case v1::ACTIVE: return "ACTIVE";
    case v1::PREVIOUS: return "PREVIOUS";
    default: return "?";
  }
}

std::string_view ModelStateName(v1::ModelState state) {
  switch (state) {
    case v1::LOADING: return "LOADING";
    case v1::READY: return "READY";
    case v1::UNLOADING: return "UNLOADING";
    case v1::FAILED: return "FAILED";
    default: return "?";
  }
}

std::string Micros(int64_t us) {
  char buf[32];
  if (us < 10'000) {
    std::snprintf(buf, sizeof(buf), "%lld us", static_cast<long long>(us));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f ms", static_cast<double>(us) / 1e3);
  }
  return buf;
}

// "reserved 24 KiB; daemon RSS 300 MiB -> peak 310 MiB[; device used A -> peak B]"
std::string PushMemoryLine(const v1::PushMemory& m) {
  std::string line = "reserved " + FormatBytes(m.staging_bytes()) + "; daemon RSS " +
                     FormatBytes(m.process_rss_before_bytes()) + " -> peak " +
                     FormatBytes(m.process_peak_rss_bytes());
  if (m.device_peak_used_bytes() != 0) {
    line += "; device used " + FormatBytes(m.device_used_before_bytes()) + " -> peak " +
            FormatBytes(m.device_peak_used_bytes());
  }
  return line;
}

std::string SwapLine(const char* verb, const v1::SwapResponse& r) {
  return std::string(verb) + " " + r.model() + ": active '" + r.active_version() +
         "' (previous '" + r.previous_version() + "'), swap took " + Micros(r.swap_time_us());
}

// Reports a failure on stderr (and as JSON on stdout with --json).
int Report(const Outcome& outcome, const Globals& g) {
  if (outcome.ok()) return 0;
  std::fprintf(stderr, "%s\n", outcome.ErrorLine().c_str());
  if (g.json) std::printf("%s\n", outcome.ErrorJson().c_str());
  return static_cast<int>(outcome.exit_code());
}

// ------------------------------------------------------------- token/setup

std::string Trim(std::string s) {
  const char* ws = " \t\r\n";
  s.erase(s.find_last_not_of(ws) + 1);
  s.erase(0, s.find_first_not_of(ws));
  return s;
}

// The admin token in precedence order; a local error if there is none.
Outcome ResolveToken(const Globals& g, std::string* token) {
  if (!g.token.empty()) {
    *token = g.token;
    return Outcome();
  }
  if (!g.token_file.empty()) {
    std::ifstream in(g.token_file);
    if (!in) return Outcome::LocalError("cannot read token file '" + g.token_file + "'");
    std::stringstream text;
    text << in.rdbuf();
    *token = Trim(text.str());
    if (token->empty()) return Outcome::LocalError("token file '" + g.token_file + "' is empty");
    return Outcome();
  }
  if (const char* env = std::getenv(kTokenEnv); env != nullptr && *env != '\0') {
    *token = Trim(env);
    return Outcome();
  }
  return Outcome::LocalError(std::string("no admin token: pass --token or --token-file, or set ") +
                             kTokenEnv);
}

// Reads a PEM file given on the command line into *out (exit 2 if unreadable).
Outcome ReadPemFlag(const std::string& flag, const std::string& path, std::string* out) {
  if (path.empty()) return Outcome();
  std::ifstream in(path);
  std::stringstream ss;
  if (!in || !(ss << in.rdbuf())) {
    return Outcome::LocalError(flag + " '" + path + "' cannot be read");
  }
  *out = ss.str();
  return Outcome();
}

// Addresses, deadline and the TLS files of both channels (exit 2 if a file
// cannot be read).
Outcome MakeClientOptions(const Globals& g, double default_timeout_s, ClientOptions* o) {
  o->admin_address = g.admin_address;
  o->inference_address = g.address;
  o->tls_server_name = g.tls_server_name;
  const double seconds = g.timeout_s.value_or(default_timeout_s);
  o->timeout = std::chrono::milliseconds(static_cast<int64_t>(std::llround(seconds * 1000)));
  for (auto [flag, path, out] :
       {std::tuple{"--tls-ca", &g.tls_ca, &o->tls_ca},
        std::tuple{"--tls-cert", &g.tls_cert, &o->tls_cert},
        std::tuple{"--tls-key", &g.tls_key, &o->tls_key},
        std::tuple{"--inference-tls-ca", &g.inference_tls_ca, &o->inference_tls_ca},
        std::tuple{"--inference-tls-cert", &g.inference_tls_cert, &o->inference_tls_cert},
        std::tuple{"--inference-tls-key", &g.inference_tls_key, &o->inference_tls_key}}) {
    if (Outcome read = ReadPemFlag(flag, *path, out); !read.ok()) return read;
  }
  return Outcome();
}

// A client for admin commands: fails (exit 2) without a token.
Outcome AdminClientFor(const Globals& g, double default_timeout_s,
                       std::optional<AdminClient>* client) {
  ClientOptions o;
  if (Outcome made = MakeClientOptions(g, default_timeout_s, &o); !made.ok()) return made;
  if (Outcome token = ResolveToken(g, &o.token); !token.ok()) return token;
  client->emplace(std::move(o));
  return Outcome();
}

// ---------------------------------------------------------------- commands

int ModelsList(const Globals& g) {
  ClientOptions options;
  if (Outcome made = MakeClientOptions(g, kDefaultTimeoutS, &options); !made.ok()) {
    return Report(made, g);
  }
  AdminClient client(std::move(options));
  v1::ListModelsResponse response;
  if (Outcome o = client.ListModels(&response); !o.ok()) return Report(o, g);
  if (g.json) {
    std::printf("%s\n", ToJson(response).c_str());
    return 0;
  }
  Table table({"NAME", "STATE", "WEIGHTS", "REASON"});
  for (const auto& m : response.models()) {
    table.AddRow({m.name(), std::string(ModelStateName(m.state())), Or(m.weights_version()),
                  m.reason()});
  }
  std::fputs(table.ToString().c_str(), stdout);
  return 0;
}

struct LoadArgs {
  std::string name, package_path, device, isolation;
  int runners = 0, queue = 0, cpu_threads = 0, max_batch = 0;
  std::vector<std::string> inputs, outputs;  // NAME:DTYPE:D0,D1,... (declared signature)
  // Dynamic batching: on when --batch or --batch-delay-us is given.
  std::optional<int64_t> batch, batch_delay_us;
  std::vector<int64_t> preferred_batch_sizes;
  bool preserve_ordering = false;
  int priority_levels = 0;
};

// "tokens:int64:-1,-1" -> TensorSpec; false with `error` set when malformed.
bool ParseSpec(const std::string& text, v1::TensorSpec* out, std::string* error) {
  const auto a = text.find(':');
  const auto b = a == std::string::npos ? a : text.find(':', a + 1);
  if (b == std::string::npos || a == 0) {
    *error = "'" + text + "': expected NAME:DTYPE:D0,D1,... (-1 = dynamic)";
    return false;
  }
  out->set_name(text.substr(0, a));
  auto dtype = DTypeFromName(text.substr(a + 1, b - a - 1));
  if (!dtype) {
    *error = "'" + text + "': unknown dtype '" + text.substr(a + 1, b - a - 1) + "'";
    return false;
  }
  out->set_dtype(server::ToProtoDType(*dtype));
  std::stringstream dims(text.substr(b + 1));
  std::string item;
  while (std::getline(dims, item, ',')) {
    try {
      size_t used = 0;
      const long long d = std::stoll(item, &used);
      if (used != item.size() || d < -1) throw std::invalid_argument(item);
      out->add_shape(d);
    } catch (const std::exception&) {
      *error = "'" + text + "': bad dim '" + item + "' (a size, or -1 for dynamic)";
      return false;
    }
  }
  return true;
}

int ModelsLoad(const Globals& g, const LoadArgs& a) {
  std::optional<AdminClient> client;
  if (Outcome o = AdminClientFor(g, kLongTimeoutS, &client); !o.ok()) return Report(o, g);
  v1::LoadModelRequest request;
  request.set_name(a.name);
  request.set_package_path(a.package_path);
  request.set_device(a.device);
  request.set_num_runners(a.runners);
  request.set_max_queue_size(a.queue);
  request.set_cpu_threads(a.cpu_threads);
  request.set_isolation(a.isolation);
  request.set_max_batch_size(a.max_batch);
  if (a.batch || a.batch_delay_us) {
    v1::DynamicBatching* b = request.mutable_dynamic_batching();
    b->set_max_batch_size(a.batch.value_or(0));
    b->set_max_queue_delay_us(a.batch_delay_us.value_or(0));
    for (int64_t size : a.preferred_batch_sizes) b->add_preferred_batch_sizes(size);
    b->set_preserve_ordering(a.preserve_ordering);
    b->set_priority_levels(a.priority_levels);
  } else if (!a.preferred_batch_sizes.empty() || a.preserve_ordering || a.priority_levels) {
    return Report(Outcome::LocalError("--preferred-batch-size, --preserve-ordering and "
                                      "--priority-levels need --batch or --batch-delay-us "
                                      "(dynamic batching)"),
                  g);
  }
  for (const auto& [texts, field] : {std::pair{&a.inputs, request.mutable_inputs()},
                                     std::pair{&a.outputs, request.mutable_outputs()}}) {
    for (const std::string& text : *texts) {
      std::string error;
      if (!ParseSpec(text, field->Add(), &error)) return Report(Outcome::LocalError(error), g);
    }
  }
  v1::LoadModelResponse response;
  if (Outcome o = client->LoadModel(request, &response); !o.ok()) return Report(o, g);
  if (g.json) {
    std::printf("%s\n", ToJson(response).c_str());
  } else {
    std::printf("loaded %s from %s: %s, weights '%s'\n", a.name.c_str(),
                a.package_path.empty() ? "the repository" : a.package_path.c_str(),
                std::string(ModelStateName(response.model().state())).c_str(),
                response.model().weights_version().c_str());
  }
  return 0;
}

int ModelsUnload(const Globals& g, const std::string& name) {
  std::optional<AdminClient> client;
  if (Outcome o = AdminClientFor(g, kDefaultTimeoutS, &client); !o.ok()) return Report(o, g);
  if (Outcome o = client->UnloadModel(name); !o.ok()) return Report(o, g);
  if (g.json) {
    std::printf("{\"unloaded\":\"%s\"}\n", JsonEscape(name).c_str());
  } else {
    std::printf("unloaded %s\n", name.c_str());
  }
  return 0;
}

struct PushArgs {
  std::string model, file, version, sha256;
  bool swap = false;
  bool server_side = false;
  double chunk_mib = 2;
};

std::string PushClientJson(const PushResult& r) {
  char seconds[32];
  std::snprintf(seconds, sizeof(seconds), "%.6f", r.seconds);
  return "{\"version\":\"" + JsonEscape(r.version) + "\",\"sha256\":\"" + r.sha256 +
         "\",\"bytes_sent\":" + std::to_string(r.bytes_sent) +
         ",\"tensors\":" + std::to_string(r.tensors) + ",\"chunks\":" + std::to_string(r.chunks) +
         ",\"seconds\":" + seconds + "}";
}

std::string PushLine(const PushArgs& a, const PushResult& r) {
  const auto& resp = r.response;
  std::string line = "pushed '" + r.version + "' to " + a.model + ": ";
  if (a.server_side) {
    line += "server-side file " + a.file;
  } else {
    const double mb_per_s = r.seconds > 0 ? static_cast<double>(r.bytes_sent) / 1e6 / r.seconds : 0;
    char rate[96];
    std::snprintf(rate, sizeof(rate), " in %.2f s (%.1f MB/s)", r.seconds, mb_per_s);
    line += std::to_string(r.tensors) + " tensors, " + FormatBytes(r.bytes_sent) + " in " +
            std::to_string(r.chunks) + " chunks" + rate;
  }
  line += "; staged " + FormatBytes(resp.staged_bytes()) + " (" +
          std::to_string(resp.tensors()) + " tensors, staging " + Micros(resp.fold_time_us()) +
          ")";
  if (resp.has_memory()) line += "; " + PushMemoryLine(resp.memory());
  line += r.sha256.empty() ? "; no sha256" : "; sha256 " + r.sha256.substr(0, 12);
  return line;
}

int WeightsPush(const Globals& g, const PushArgs& a) {
  if (!a.server_side && !a.sha256.empty()) {
    return Report(Outcome::LocalError("--sha256 is only for --server-side (streamed pushes "
                                      "compute it)"), g);
  }
  std::optional<AdminClient> client;
  if (Outcome o = AdminClientFor(g, kLongTimeoutS, &client); !o.ok()) return Report(o, g);
  PushOptions options;
  options.model = a.model;
  options.file = a.file;
  options.version = a.version;
  options.chunk_bytes = std::max<uint64_t>(1, std::llround(a.chunk_mib * (1 << 20)));
  options.server_side = a.server_side;
  options.sha256 = a.sha256;
  options.progress = !g.json && isatty(STDERR_FILENO);
  WeightPusher pusher(*client);
  PushResult result;
  if (Outcome o = pusher.Push(options, &result); !o.ok()) return Report(o, g);
  if (!a.swap) {
    if (g.json) {
      std::printf("{\"update\":%s,\"client\":%s}\n", ToJson(result.response).c_str(),
                  PushClientJson(result).c_str());
    } else {
      std::printf("%s\n", PushLine(a, result).c_str());
    }
    return 0;
  }
  v1::SwapResponse swap;
  const Outcome swapped = client->Swap(a.model, result.version, &swap);
  if (g.json) {
    const std::string tail = swapped.ok() ? "\"swap\":" + ToJson(swap)
                                          : swapped.ErrorJson().substr(1, swapped.ErrorJson().size() - 2);
    std::printf("{\"update\":%s,\"client\":%s,%s}\n", ToJson(result.response).c_str(),
                PushClientJson(result).c_str(), tail.c_str());
    if (!swapped.ok()) std::fprintf(stderr, "%s\n", swapped.ErrorLine().c_str());
    return static_cast<int>(swapped.exit_code());
  }
  std::printf("%s\n", PushLine(a, result).c_str());
  if (!swapped.ok()) return Report(swapped, g);
  std::printf("%s\n", SwapLine("swapped", swap).c_str());
  return 0;
}

int WeightsSwap(const Globals& g, const std::string& model, const std::string& expect,
                bool rollback) {
  std::optional<AdminClient> client;
  if (Outcome o = AdminClientFor(g, kDefaultTimeoutS, &client); !o.ok()) return Report(o, g);
  v1::SwapResponse response;
  const Outcome o = rollback ? client->Rollback(model, &response)
                             : client->Swap(model, expect, &response);
  if (!o.ok()) return Report(o, g);
  if (g.json) {
    std::printf("%s\n", ToJson(response).c_str());
  } else {
    std::printf("%s\n", SwapLine(rollback ? "rolled back" : "swapped", response).c_str());
  }
  return 0;
}

int WeightsFreeInactive(const Globals& g, const std::string& model) {
  std::optional<AdminClient> client;
  if (Outcome o = AdminClientFor(g, kDefaultTimeoutS, &client); !o.ok()) return Report(o, g);
  v1::FreeInactiveResponse response;
  if (Outcome o = client->FreeInactive(model, &response); !o.ok()) return Report(o, g);
  if (g.json) {
    std::printf("%s\n", ToJson(response).c_str());
  } else {
    std::printf("freed the inactive weights of %s: %s\n", model.c_str(),
                FormatBytes(response.freed_bytes()).c_str());
  }
  return 0;
}

int WeightsStatus(const Globals& g, const std::string& model) {
  std::optional<AdminClient> client;
  if (Outcome o = AdminClientFor(g, kDefaultTimeoutS, &client); !o.ok()) return Report(o, g);
  v1::ConstantBufferStatus response;
  if (Outcome o = client->GetStatus(model, &response); !o.ok()) return Report(o, g);
  if (g.json) {
    std::printf("%s\n", ToJson(response).c_str());
    return 0;
  }
  std::printf("model %s: %s in use\n", response.model().c_str(),
              FormatBytes(response.bytes_in_use()).c_str());
  // BYTES: weight data; HOST / DEVICE: what the buffer holds in all (blob +
  // constant-folded results, FOLDED of it).
  Table table({"BUFFER", "STATE", "VERSION", "BYTES", "HOST", "DEVICE", "FOLDED", "SHA256",
               "SOURCE", "UPDATED"});
  const v1::WeightsMemory& mem = response.memory();
  auto add = [&](const char* which, const v1::BufferInfo& b, const v1::BufferMemory& m) {
    table.AddRow({which, std::string(StateName(b.state())), Or(b.version()),
                  FormatBytes(b.bytes()), FormatBytes(m.host_bytes()),
                  FormatBytes(m.device_bytes()), FormatBytes(m.folded_bytes()),
                  Or(b.sha256().substr(0, 12)), Or(b.source()), FormatTime(b.updated_at())});
  };
  add("active", response.active(), mem.active());
  add("inactive", response.inactive(), mem.inactive());
  std::fputs(table.ToString().c_str(), stdout);
  auto budget = [](uint64_t limit) { return limit ? FormatBytes(limit) : std::string("none"); };
  std::string uploads = "upload buffers " + FormatBytes(mem.upload_bytes());
  if (mem.device_upload_bytes() != 0) {
    uploads += ", transient device copy " + FormatBytes(mem.device_upload_bytes());
  }
  std::printf("staging: %s held (%s); model budget %s; server %s held, budget %s\n",
              FormatBytes(mem.staging_bytes()).c_str(), uploads.c_str(),
              budget(mem.staging_budget_bytes()).c_str(),
              FormatBytes(mem.server_staging_bytes()).c_str(),
              budget(mem.server_staging_budget_bytes()).c_str());
  std::printf("process: RSS %s, peak %s\n", FormatBytes(mem.process_rss_bytes()).c_str(),
              FormatBytes(mem.process_peak_rss_bytes()).c_str());
  if (!mem.last_push().version().empty()) {
    std::printf("last push '%s' (%s, %s): %s\n", mem.last_push().version().c_str(),
                mem.last_push().ok() ? "staged" : "failed",
                FormatTime(mem.last_push().finished_at()).c_str(),
                PushMemoryLine(mem.last_push()).c_str());
  }
  if (!response.last_error().empty()) {
    std::printf("last error (%s): %s\n", FormatTime(response.last_error_at()).c_str(),
                response.last_error().c_str());
  }
  // Which constants a push may name (Inference.GetModel); informational, so
  // an unreachable inference address does not fail the command.
  v1::ModelInfo info;
  if (Outcome o = client->GetModel(model, &info); !o.ok()) {
    std::printf("constants: not shown (GetModel on %s failed)\n", g.address.c_str());
    return 0;
  }
  std::string names;
  for (const auto& c : info.constants()) names += (names.empty() ? "" : ", ") + c.name();
  std::printf("updatable constants (%d, %s): %s\n", info.constants_size(),
              FormatBytes(static_cast<uint64_t>(info.constants_bytes())).c_str(),
              Or(names).c_str());
  std::string folded;
  for (const auto& f : info.folded_constants()) folded += (folded.empty() ? "" : ", ") + f;
  if (!folded.empty()) std::printf("not updatable (folded or tensor constants): %s\n", folded.c_str());
  if (!info.runtime_constant_folding()) {
    std::printf("compiled without runtime constant folding: parameters inductor folded at "
                "compile time are not in the package and cannot be updated\n");
  }
  return 0;
}

int ModelsInspect(const Globals& g, const std::string& path) {
  auto desc = DescribePackage(path);
  if (!desc.ok()) {
    return Report(Outcome::LocalError("cannot inspect " + path + ": " + desc.status().message()), g);
  }
  if (g.json) {
    std::printf("%s\n", InspectJson(*desc).c_str());
  } else {
    std::fputs(InspectText(*desc).c_str(), stdout);
  }
  return 0;
}

int Check(const Globals& g, const std::string& model) {
  ClientOptions options;
  if (Outcome made = MakeClientOptions(g, kDefaultTimeoutS, &options); !made.ok()) {
    return Report(made, g);
  }
  CheckReport report;
  if (Outcome o = CheckServer(options, model, &report); !o.ok()) return Report(o, g);
  if (g.json) {
    std::printf("{\"ready\":true,\"model\":\"%s\",\"weights_version\":\"%s\",\"outputs\":%zu,"
                "\"infer_ms\":%.3f}\n", JsonEscape(model).c_str(),
                JsonEscape(report.weights_version).c_str(), report.outputs, report.infer_ms);
  } else {
    std::printf("%s ready; %s answered one inference (%zu output(s), weights '%s', %.1f ms)\n",
                g.address.c_str(), model.c_str(), report.outputs, report.weights_version.c_str(),
                report.infer_ms);
  }
  return 0;
}

struct FleetArgs {
  std::vector<std::string> endpoints;
  std::string headless;
  std::string dns_srv;
  double stage_timeout_s = 600;
  double commit_timeout_s = 30;
  int commit_attempts = 3;
};

bool HasFleet(const FleetArgs& f) {
  return !f.endpoints.empty() || !f.headless.empty() || !f.dns_srv.empty();
}

// The admin client settings (token, TLS) and the replicas; exit 2 if unusable.
Outcome FleetOptionsFor(const Globals& g, const FleetArgs& f, FleetOptions* out) {
  if (!f.endpoints.empty() + !f.headless.empty() + !f.dns_srv.empty() > 1) {
    return Outcome::LocalError("give one of --endpoints, --headless, --dns-srv");
  }
  if (Outcome made = MakeClientOptions(g, kDefaultTimeoutS, &out->client); !made.ok()) return made;
  if (Outcome token = ResolveToken(g, &out->client.token); !token.ok()) return token;
  if (!f.dns_srv.empty()) {
    auto resolved = FleetRollout::ResolveSrv(f.dns_srv);
    if (!resolved.ok()) return Outcome::LocalError(resolved.status());
    out->endpoints = *resolved;
  } else if (!f.headless.empty()) {
    auto resolved = FleetRollout::ResolveHeadless(f.headless);
    if (!resolved.ok()) return Outcome::LocalError(resolved.status());
    out->endpoints = *resolved;
  } else {
    out->endpoints = f.endpoints;
  }
  std::vector<std::string> sorted = out->endpoints;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return Outcome::LocalError("an endpoint is listed twice");
  }
  auto ms = [](double s) { return std::chrono::milliseconds(std::llround(s * 1000)); };
  out->stage_timeout = ms(f.stage_timeout_s);
  out->commit_timeout = ms(f.commit_timeout_s);
  out->inspect_timeout = ms(g.timeout_s.value_or(10));
  out->commit_attempts = f.commit_attempts;
  if (!g.json) {
    out->progress = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  }
  return Outcome();
}

int PrintFleet(const Globals& g, const FleetResult& r, const std::string& model,
               const std::string& version, bool rollback) {
  if (g.json) {
    std::printf("%s\n", FleetRollout::Json(r, model, version).c_str());
  } else {
    std::fputs(FleetRollout::Table(r).c_str(), stdout);
    const size_t n = r.replicas.size();
    if (rollback) {
      std::printf("%s: %s on %zu replica(s) in %.2f s; skew %.1f ms\n", model.c_str(),
                  r.result.c_str(), n, r.seconds, r.commit_skew_ms);
    } else if (r.result == "committed") {
      std::printf("%s: '%s' (sha256 %s) active on all %zu replica(s) in %.2f s; commit skew "
                  "%.1f ms\n", model.c_str(), version.c_str(), r.sha256.substr(0, 12).c_str(), n,
                  r.seconds, r.commit_skew_ms);
    } else if (r.result == "aborted") {
      std::printf("%s: rollout of '%s' ABORTED: no replica changed what it serves\n",
                  model.c_str(), version.c_str());
    } else {
      std::printf("%s: rollout of '%s' PARTIAL: some replicas serve it, others do not; run the "
                  "same rollout again (it converges) or `weights rollback --endpoints`\n",
                  model.c_str(), version.c_str());
    }
  }
  if (!r.ok()) {
    std::fprintf(stderr, "pt2ctl: %s %s\n", rollback ? "rollback" : "rollout", r.result.c_str());
  }
  return r.ok() ? 0 : static_cast<int>(ExitCode::kRefused);
}

int WeightsRollout(const Globals& g, const RolloutSpec& spec, const FleetArgs& f) {
  if (!HasFleet(f)) {
    return Report(Outcome::LocalError("rollout needs --endpoints, --headless or --dns-srv"), g);
  }
  if (!spec.server_side && !spec.sha256.empty()) {
    return Report(Outcome::LocalError("--sha256 is only for --server-side (streamed pushes "
                                      "compute it)"), g);
  }
  FleetOptions options;
  if (Outcome o = FleetOptionsFor(g, f, &options); !o.ok()) return Report(o, g);
  FleetRollout rollout(std::move(options));
  return PrintFleet(g, rollout.Rollout(spec), spec.model, spec.version, false);
}

int FleetRollback(const Globals& g, const std::string& model, const FleetArgs& f) {
  FleetOptions options;
  if (Outcome o = FleetOptionsFor(g, f, &options); !o.ok()) return Report(o, g);
  FleetRollout rollout(std::move(options));
  return PrintFleet(g, rollout.Rollback(model), model, "", true);
}

// --endpoints / --headless (and the timeouts of a rollout).
void AddFleetOptions(CLI::App* cmd, FleetArgs* f, bool rollout) {
  cmd->add_option("--endpoints", f->endpoints, "Admin addresses of every replica (A,B,...)")
      ->delimiter(',');
  cmd->add_option("--headless", f->headless,
                  "NAME:PORT of a headless Service: every address NAME resolves to");
  cmd->add_option("--dns-srv", f->dns_srv,
                  "SRV name (e.g. _grpc-admin._tcp.SVC.NS.svc.cluster.local): every target:port");
  if (!rollout) return;
  cmd->add_option("--stage-timeout", f->stage_timeout_s,
                  "Seconds each replica may take to stage before the rollout aborts")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--commit-timeout", f->commit_timeout_s, "Seconds each commit may take")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--commit-attempts", f->commit_attempts,
                  "Tries per replica when a commit's connection fails (compare-and-swap: "
                  "retries never flip back)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
}

int Main(int argc, char** argv) {
  CLI::App app{"pt2ctl: control a running pt2serve daemon (models and hot-swappable weights)",
               "pt2ctl"};
  app.footer(kFooter);
  app.require_subcommand(1);
  // Global options may also follow the subcommand.
  app.fallthrough();
  Globals g;
  app.add_option("--admin-address", g.admin_address, "Admin API address (host:port or unix:PATH)")
      ->capture_default_str();
  app.add_option("--address", g.address, "Inference API address, for `models list`")
      ->capture_default_str();
  app.add_option("--token", g.token, "Admin bearer token");
  app.add_option("--token-file", g.token_file, "File holding the admin bearer token");
  app.add_option("--tls-ca", g.tls_ca, "Use TLS to the admin API, trusting this CA (PEM file)");
  app.add_option("--tls-cert", g.tls_cert, "Client certificate for mTLS (PEM file)")
      ->needs("--tls-ca");
  app.add_option("--tls-key", g.tls_key, "Client private key for mTLS (PEM file)")
      ->needs("--tls-cert");
  app.add_option("--tls-server-name", g.tls_server_name,
                 "Name the admin certificate must carry when the address is an IP "
                 "(replicas of a headless Service)")
      ->needs("--tls-ca");
  app.add_option("--inference-tls-ca", g.inference_tls_ca,
                 "Use TLS to the inference API (`models list`), trusting this CA (PEM file)");
  app.add_option("--inference-tls-cert", g.inference_tls_cert,
                 "Client certificate for the inference API (PEM file)")
      ->needs("--inference-tls-ca");
  app.add_option("--inference-tls-key", g.inference_tls_key,
                 "Client private key for the inference API (PEM file)")
      ->needs("--inference-tls-cert");
  app.add_flag("--json", g.json, "Print one JSON object (results and errors) on stdout");
  app.add_option("--timeout", g.timeout_s,
                 "RPC deadline in seconds (default 300 for push and load, 30 otherwise)")
      ->check(CLI::PositiveNumber);

  std::function<int()> action;

  std::string check_model = "mlp";
  auto* check_cmd = app.add_subcommand(
      "check", "Check that the server is ready and MODEL answers one inference (KServe v2)");
  check_cmd->add_option("--model", check_model, "Model to run one inference on")
      ->capture_default_str();
  check_cmd->callback([&] { action = [&] { return Check(g, check_model); }; });

  auto* models = app.add_subcommand("models", "List, load and unload models");
  models->require_subcommand(1);
  models->add_subcommand("list", "List every model the server knows (Inference.ListModels)")
      ->callback([&] { action = [&] { return ModelsList(g); }; });

  LoadArgs load;
  auto* load_cmd = models->add_subcommand("load", "Load a package from the server's repository");
  load_cmd->add_option("name", load.name, "Name to serve the model under")->required();
  load_cmd->add_option("package_path", load.package_path,
                       "Path of the .pt2 relative to the server's model repository; omitted: "
                       "load repository model NAME by name (its versions and config.yaml)");
  load_cmd->add_option("--device", load.device, "cpu, cuda, cuda:N (default: server's)");
  load_cmd->add_option("--runners", load.runners, "Concurrent runners (default: server's)")
      ->check(CLI::NonNegativeNumber);
  load_cmd->add_option("--queue", load.queue, "Max queued requests (default: server's)")
      ->check(CLI::NonNegativeNumber);
  load_cmd->add_option("--cpu-threads", load.cpu_threads,
                       "Intra-op threads per runner for CPU work (default: the process's)")
      ->check(CLI::Range(0, 1024));
  load_cmd->add_option("--isolation", load.isolation,
                       "in_process (default) or process: run the model in a worker process "
                       "that is restarted if a request crashes it")
      ->check(CLI::IsMember({"in_process", "process"}));
  load_cmd->add_option("--input", load.inputs,
                       "Declared input NAME:DTYPE:D0,D1,... (-1 = dynamic), in the package's "
                       "order; repeat. Checked against the package");
  load_cmd->add_option("--output", load.outputs, "Declared output, like --input; repeat");
  load_cmd->add_option("--max-batch", load.max_batch,
                       "With --input/--output: largest batch accepted (default: the package's)")
      ->check(CLI::NonNegativeNumber);
  load_cmd->add_option("--batch", load.batch,
                       "Dynamic batching: rows per batch (0 = the package's limit); turns "
                       "batching on")
      ->check(CLI::NonNegativeNumber);
  load_cmd->add_option("--batch-delay-us", load.batch_delay_us,
                       "Dynamic batching: how long a request may wait for its batch to fill "
                       "(default 0); turns batching on")
      ->check(CLI::NonNegativeNumber);
  load_cmd->add_option("--preferred-batch-size", load.preferred_batch_sizes,
                       "Dynamic batching: a batch size sent without waiting; repeat");
  load_cmd->add_flag("--preserve-ordering", load.preserve_ordering,
                     "Dynamic batching: answer requests in arrival order");
  load_cmd->add_option("--priority-levels", load.priority_levels,
                       "Dynamic batching: number of priority levels (requests name 1..N)")
      ->check(CLI::Range(0, 64));
  load_cmd->callback([&] { action = [&] { return ModelsLoad(g, load); }; });

  std::string unload_name;
  auto* unload_cmd = models->add_subcommand("unload", "Unload a model (waits for its requests)");
  unload_cmd->add_option("name", unload_name, "Model name")->required();
  unload_cmd->callback([&] { action = [&] { return ModelsUnload(g, unload_name); }; });

  std::string inspect_path;
  auto* inspect_cmd = models->add_subcommand(
      "inspect", "Show what a local .pt2 package holds (no server needed)");
  inspect_cmd->add_option("package", inspect_path, "Path of the .pt2 file")->required();
  inspect_cmd->callback([&] { action = [&] { return ModelsInspect(g, inspect_path); }; });

  auto* weights = app.add_subcommand("weights", "Push, swap, roll back and inspect weights");
  weights->require_subcommand(1);

  PushArgs push;
  auto* push_cmd = weights->add_subcommand(
      "push", "Stage a .safetensors weight set into MODEL's inactive buffer");
  push_cmd->add_option("model", push.model, "Model name")->required();
  push_cmd->add_option("file", push.file,
                       "Local .safetensors file (with --server-side: path relative to the "
                       "server's model repository)")
      ->required();
  push_cmd->add_option("--version", push.version, "Version label (default: the file's stem)");
  push_cmd->add_flag("--swap", push.swap, "Swap the pushed weights in right after staging");
  push_cmd->add_option("--chunk-size-mb", push.chunk_mib, "Chunk size in MiB")
      ->capture_default_str()
      ->check(CLI::Range(1e-6, 64.0));
  push_cmd->add_flag("--server-side", push.server_side,
                     "The server reads FILE from its model repository (no upload)");
  push_cmd->add_option("--sha256", push.sha256,
                       "With --server-side: SHA-256 of the server's file (default: that of a "
                       "local copy at FILE, if readable)");
  push_cmd->callback([&] { action = [&] { return WeightsPush(g, push); }; });

  std::string model, expect;
  auto* swap_cmd = weights->add_subcommand("swap", "Make the STAGED weights active");
  swap_cmd->add_option("model", model, "Model name")->required();
  swap_cmd->add_option("--expect", expect, "Fail unless the staged version is this");
  swap_cmd->callback([&] { action = [&] { return WeightsSwap(g, model, expect, false); }; });

  FleetArgs rollback_fleet;
  auto* rollback_cmd = weights->add_subcommand(
      "rollback", "Swap back to the PREVIOUS weights (on every replica with --endpoints)");
  rollback_cmd->add_option("model", model, "Model name")->required();
  AddFleetOptions(rollback_cmd, &rollback_fleet, false);
  rollback_cmd->callback([&] {
    action = [&] {
      return HasFleet(rollback_fleet) ? FleetRollback(g, model, rollback_fleet)
                                      : WeightsSwap(g, model, "", true);
    };
  });

  RolloutSpec rollout;
  FleetArgs rollout_fleet;
  double rollout_chunk_mib = 2;
  auto* rollout_cmd = weights->add_subcommand(
      "rollout",
      "Stage FILE on every replica, verify the same sha256, commit on all at once; abort on "
      "all if any replica fails");
  rollout_cmd->add_option("model", rollout.model, "Model name")->required();
  rollout_cmd->add_option("file", rollout.file,
                          "Local .safetensors file (with --server-side: path relative to each "
                          "server's model repository)")
      ->required();
  rollout_cmd->add_option("--version", rollout.version, "Version label to roll out")->required();
  rollout_cmd->add_flag("--server-side", rollout.server_side,
                        "Every server reads FILE from its model repository (no upload)");
  rollout_cmd->add_option("--sha256", rollout.sha256,
                          "With --server-side: SHA-256 of FILE (default: of a local copy)");
  rollout_cmd->add_option("--chunk-size-mb", rollout_chunk_mib, "Chunk size in MiB")
      ->capture_default_str()
      ->check(CLI::Range(1e-6, 64.0));
  AddFleetOptions(rollout_cmd, &rollout_fleet, true);
  rollout_cmd->callback([&] {
    action = [&] {
      rollout.chunk_bytes = std::max<uint64_t>(1, std::llround(rollout_chunk_mib * (1 << 20)));
      return WeightsRollout(g, rollout, rollout_fleet);
    };
  });

  auto* free_cmd = weights->add_subcommand(
      "free-inactive", "Release the inactive buffer (no rollback afterwards)");
  free_cmd->add_option("model", model, "Model name")->required();
  free_cmd->callback([&] { action = [&] { return WeightsFreeInactive(g, model); }; });

  auto* status_cmd = weights->add_subcommand("status", "Show both constant buffers of MODEL");
  status_cmd->add_option("model", model, "Model name")->required();
  status_cmd->callback([&] { action = [&] { return WeightsStatus(g, model); }; });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help (rc 0) or the error
    return rc == 0 ? 0 : static_cast<int>(ExitCode::kLocalError);
  }
  if (!action) return static_cast<int>(ExitCode::kLocalError);
  return action();
}

}  // namespace
}  // namespace pt2serve::ctl

int main(int argc, char** argv) { return pt2serve::ctl::Main(argc, argv); }
