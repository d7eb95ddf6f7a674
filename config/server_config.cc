#include "config/server_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>
#include <sstream>

#include "common/limits.h"

namespace pt2serve {
namespace {

namespace fs = std::filesystem;

// ---- YAML reading: every helper reports the key path it failed at. ----

std::string Child(std::string_view path, std::string_view key) {
  return path.empty() ? std::string(key) : std::string(path) + "." + std::string(key);
}

std::string_view KindName(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing";
    case YAML::NodeType::Scalar: return "a scalar";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    default: return "an undefined node";
  }
}

Status Error(std::string_view path, std::string_view problem) {
  return InvalidArgument(std::string(path) + ": " + std::string(problem));
}

// A mapping (or null, read as empty) whose keys must all be in `allowed`.
Status CheckMap(const YAML::Node& node, std::string_view path,
                std::initializer_list<std::string_view> allowed) {
  if (node.IsNull()) return Status::Ok();
  if (!node.IsMap()) {
    return Error(path, "expected a mapping, got " + std::string(KindName(node)));
  }
  std::map<std::string, int, std::less<>> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) return Error(path, "mapping keys must be strings");
    const std::string& key = kv.first.Scalar();
    if (seen[key]++ > 0) return Error(Child(path, key), "duplicate key");
    bool known = false;
    for (std::string_view a : allowed) known = known || a == key;
    if (!known) {
      std::string list;
      for (std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      return InvalidArgument("unknown key '" + Child(path, key) + "' (known keys: " + list + ")");
    }
  }
  return Status::Ok();
}

// map[key], or a null node when absent. (A missing key on a const node yields
// an invalid "zombie" node whose Type() throws; never let one escape.)
YAML::Node Get(const YAML::Node& map, std::string_view key) {
  if (!map.IsMap()) return YAML::Node();
  YAML::Node node = map[std::string(key)];
  return node.IsDefined() ? node : YAML::Node();
}

bool Has(const YAML::Node& map, std::string_view key) {
  return map.IsMap() && map[std::string(key)].IsDefined();
}

// The Read* helpers set *out from map[key] if present and leave *out (the
// default) otherwise. An explicit null (`key:`) is an error, not a default.
Status ReadScalar(const YAML::Node& map, std::string_view key, std::string_view path,
                  std::string_view type, YAML::Node* out) {
  *out = Get(map, key);
  if (out->IsNull()) return Error(Child(path, key), "has no value (write \"\" for empty)");
  if (!out->IsScalar()) {
    return Error(Child(path, key),
                 "expected " + std::string(type) + ", got " + std::string(KindName(*out)));
  }
  return Status::Ok();
}

Status ReadString(const YAML::Node& map, std::string_view key, std::string_view path,
                  std::string* out) {
  if (!Has(map, key)) return Status::Ok();
  YAML::Node node;
  PT2_RETURN_IF_ERROR(ReadScalar(map, key, path, "a string", &node));
  *out = node.Scalar();
  return Status::Ok();
}

Status ReadInt64(const YAML::Node& map, std::string_view key, std::string_view path,
                 int64_t* out) {
  if (!Has(map, key)) return Status::Ok();
  YAML::Node node;
  PT2_RETURN_IF_ERROR(ReadScalar(map, key, path, "an integer", &node));
  if (!YAML::convert<int64_t>::decode(node, *out)) {
    return Error(Child(path, key), "expected an integer, got '" + node.Scalar() + "'");
  }
  return Status::Ok();
}

Status ReadInt(const YAML::Node& map, std::string_view key, std::string_view path, int* out) {
  int64_t value = *out;
  PT2_RETURN_IF_ERROR(ReadInt64(map, key, path, &value));
  if (value < INT_MIN || value > INT_MAX) {
    return Error(Child(path, key), "value " + std::to_string(value) + " is out of range");
  }
  *out = static_cast<int>(value);
  return Status::Ok();
}

Status ReadBool(const YAML::Node& map, std::string_view key, std::string_view path, bool* out) {
  if (!Has(map, key)) return Status::Ok();
  YAML::Node node;
  PT2_RETURN_IF_ERROR(ReadScalar(map, key, path, "true or false", &node));
  if (!YAML::convert<bool>::decode(node, *out)) {
    return Error(Child(path, key), "expected true or false, got '" + node.Scalar() + "'");
  }
  return Status::Ok();
}

Status ReadTls(const YAML::Node& tls, std::string_view key, TlsConfig* out) {
  const std::string path = Child("server.tls", key);
  const YAML::Node node = Get(tls, key);
  PT2_RETURN_IF_ERROR(CheckMap(node, path, {"cert_file", "key_file", "client_ca_file"}));
  PT2_RETURN_IF_ERROR(ReadString(node, "cert_file", path, &out->cert_file));
  PT2_RETURN_IF_ERROR(ReadString(node, "key_file", path, &out->key_file));
  return ReadString(node, "client_ca_file", path, &out->client_ca_file);
}

Status ReadServer(const YAML::Node& s, ServerConfig* c) {
  const std::string p = "server";
  PT2_RETURN_IF_ERROR(CheckMap(s, p,
      {"inference_address", "admin_address", "metrics_address", "model_repository",
       "max_message_bytes", "drain_delay_ms", "drain_timeout_ms", "max_connection_age_ms",
       "max_connection_age_grace_ms", "allow_repository_admin_on_inference_port", "admin_auth",
       "tls", "allow_compressed_requests", "repository_mode", "repository_poll_interval_ms",
       "upload_idle_timeout_ms", "shared_memory", "weights_staging_budget_bytes"}));
  PT2_RETURN_IF_ERROR(ReadString(s, "inference_address", p, &c->inference_address));
  PT2_RETURN_IF_ERROR(ReadString(s, "admin_address", p, &c->admin_address));
  PT2_RETURN_IF_ERROR(ReadString(s, "metrics_address", p, &c->metrics_address));
  PT2_RETURN_IF_ERROR(ReadString(s, "model_repository", p, &c->model_repository));
  PT2_RETURN_IF_ERROR(ReadString(s, "repository_mode", p, &c->repository_mode));
  PT2_RETURN_IF_ERROR(
      ReadInt(s, "repository_poll_interval_ms", p, &c->repository_poll_interval_ms));
  PT2_RETURN_IF_ERROR(ReadInt64(s, "max_message_bytes", p, &c->max_message_bytes));
  PT2_RETURN_IF_ERROR(ReadInt(s, "drain_delay_ms", p, &c->drain_delay_ms));
  PT2_RETURN_IF_ERROR(ReadInt(s, "drain_timeout_ms", p, &c->drain_timeout_ms));
  PT2_RETURN_IF_ERROR(ReadInt(s, "upload_idle_timeout_ms", p, &c->upload_idle_timeout_ms));
  PT2_RETURN_IF_ERROR(
      ReadInt64(s, "weights_staging_budget_bytes", p, &c->weights_staging_budget_bytes));
  PT2_RETURN_IF_ERROR(ReadInt(s, "max_connection_age_ms", p, &c->max_connection_age_ms));
  PT2_RETURN_IF_ERROR(
      ReadInt(s, "max_connection_age_grace_ms", p, &c->max_connection_age_grace_ms));
  PT2_RETURN_IF_ERROR(ReadBool(s, "allow_repository_admin_on_inference_port", p,
                               &c->allow_repository_admin_on_inference_port));
  PT2_RETURN_IF_ERROR(
      ReadBool(s, "allow_compressed_requests", p, &c->allow_compressed_requests));
  PT2_RETURN_IF_ERROR(ReadString(s, "shared_memory", p, &c->shared_memory));

  const YAML::Node auth = Get(s, "admin_auth");
  PT2_RETURN_IF_ERROR(CheckMap(auth, "server.admin_auth", {"token_file", "token_env"}));
  PT2_RETURN_IF_ERROR(ReadString(auth, "token_file", "server.admin_auth", &c->admin_token_file));
  PT2_RETURN_IF_ERROR(ReadString(auth, "token_env", "server.admin_auth", &c->admin_token_env));

  const YAML::Node tls = Get(s, "tls");
  PT2_RETURN_IF_ERROR(CheckMap(tls, "server.tls", {"inference", "admin"}));
  PT2_RETURN_IF_ERROR(ReadTls(tls, "inference", &c->inference_tls));
  return ReadTls(tls, "admin", &c->admin_tls);
}

Status ReadLogging(const YAML::Node& l, ServerConfig* c) {
  const std::string p = "logging";
  PT2_RETURN_IF_ERROR(CheckMap(l, p, {"level", "format", "access_log"}));
  PT2_RETURN_IF_ERROR(ReadString(l, "level", p, &c->log_level));
  PT2_RETURN_IF_ERROR(ReadString(l, "format", p, &c->log_format));
  return ReadBool(l, "access_log", p, &c->access_log);
}

// One declared input or output: {name, dtype, shape}.
Status ReadTensorSpec(const YAML::Node& n, const std::string& p, TensorSpec* out) {
  if (!n.IsMap()) return Error(p, "expected a mapping, got " + std::string(KindName(n)));
  PT2_RETURN_IF_ERROR(CheckMap(n, p, {"name", "dtype", "shape", "dims"}));
  for (const char* key : {"name", "dtype", "shape"}) {
    if (!Has(n, key)) return Error(Child(p, key), "is required");
  }
  PT2_RETURN_IF_ERROR(ReadString(n, "name", p, &out->name));
  std::string dtype;
  PT2_RETURN_IF_ERROR(ReadString(n, "dtype", p, &dtype));
  auto parsed = DTypeFromName(dtype);
  if (!parsed) return Error(Child(p, "dtype"), "unknown dtype '" + dtype + "'");
  out->dtype = *parsed;
  const YAML::Node shape = Get(n, "shape");
  if (!shape.IsSequence()) {
    return Error(Child(p, "shape"), "expected a list of dims (-1 = dynamic)");
  }
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t d = 0;
    if (!shape[i].IsScalar() || !YAML::convert<int64_t>::decode(shape[i], d) || d < -1) {
      return Error(Child(p, "shape") + "[" + std::to_string(i) + "]",
                   "expected an integer >= -1 (-1 = dynamic)");
    }
    out->shape.push_back(d);
  }
  // Optional per-dim ranges, e.g. dims: [{min: 1, max: 8}, {}] (narrower than the package's).
  if (!Has(n, "dims")) return Status::Ok();
  const YAML::Node dims = Get(n, "dims");
  const std::string dp = Child(p, "dims");
  if (!dims.IsSequence() || dims.size() != shape.size()) {
    return Error(dp, "expected one {min, max} mapping per dim of shape");
  }
  for (size_t i = 0; i < dims.size(); ++i) {
    const std::string ip = dp + "[" + std::to_string(i) + "]";
    if (!dims[i].IsMap() && !dims[i].IsNull()) return Error(ip, "expected {min, max}");
    PT2_RETURN_IF_ERROR(CheckMap(dims[i], ip, {"min", "max"}));
    DimRange r;
    PT2_RETURN_IF_ERROR(ReadInt64(dims[i], "min", ip, &r.min));
    PT2_RETURN_IF_ERROR(ReadInt64(dims[i], "max", ip, &r.max));
    if (r.min < 0 || r.max < r.min) return Error(ip, "needs 0 <= min <= max");
    out->dims.push_back(r);
  }
  return Status::Ok();
}

// `inputs` + `outputs` (+ optional `max_batch_size`) of a model entry.
Status ReadDeclaredSignature(const YAML::Node& m, const std::string& p,
                             std::optional<Signature>* out) {
  const bool any = Has(m, "inputs") || Has(m, "outputs") || Has(m, "max_batch_size");
  if (!any) return Status::Ok();
  if (!Has(m, "inputs") || !Has(m, "outputs")) {
    return Error(p, "a declared signature needs both 'inputs' and 'outputs'");
  }
  Signature sig;
  for (const char* key : {"inputs", "outputs"}) {
    const YAML::Node list = Get(m, key);
    const std::string lp = Child(p, key);
    if (!list.IsSequence() || list.size() == 0) return Error(lp, "expected a non-empty list");
    for (size_t i = 0; i < list.size(); ++i) {
      TensorSpec spec;
      PT2_RETURN_IF_ERROR(ReadTensorSpec(list[i], lp + "[" + std::to_string(i) + "]", &spec));
      (std::string_view(key) == "inputs" ? sig.inputs : sig.outputs).push_back(std::move(spec));
    }
  }
  PT2_RETURN_IF_ERROR(ReadInt64(m, "max_batch_size", p, &sig.max_batch_size));
  if (sig.max_batch_size < 0 || sig.max_batch_size > INT32_MAX) {
    return Error(Child(p, "max_batch_size"), "must be in 0..2147483647");
  }
  *out = std::move(sig);
  return Status::Ok();
}

Status ReadInt64List(const YAML::Node& map, std::string_view key, std::string_view path,
                     std::vector<int64_t>* out) {
  if (!Has(map, key)) return Status::Ok();
  const YAML::Node list = Get(map, key);
  if (!list.IsSequence()) return Error(Child(path, key), "expected a list of integers");
  out->clear();
  for (size_t i = 0; i < list.size(); ++i) {
    int64_t v = 0;
    if (!list[i].IsScalar() || !YAML::convert<int64_t>::decode(list[i], v)) {
      return Error(Child(path, key) + "[" + std::to_string(i) + "]", "expected an integer");
    }
    out->push_back(v);
  }
  return Status::Ok();
}

Status ReadBatching(const YAML::Node& m, const std::string& p,
                    std::optional<BatchingEntry>* out);

// The keys of one model entry (the caller checked which keys may appear).
Status ReadModelEntry(const YAML::Node& m, const std::string& p, ModelEntry* e) {
  PT2_RETURN_IF_ERROR(ReadString(m, "name", p, &e->name));
  PT2_RETURN_IF_ERROR(ReadString(m, "path", p, &e->path));
  PT2_RETURN_IF_ERROR(ReadString(m, "device", p, &e->device));
  PT2_RETURN_IF_ERROR(ReadInt(m, "num_runners", p, &e->num_runners));
  PT2_RETURN_IF_ERROR(ReadInt(m, "max_queue_size", p, &e->max_queue_size));
  PT2_RETURN_IF_ERROR(ReadInt(m, "timeout_ms", p, &e->timeout_ms));
  PT2_RETURN_IF_ERROR(ReadInt(m, "cpu_threads", p, &e->cpu_threads));
  PT2_RETURN_IF_ERROR(ReadString(m, "weights_version", p, &e->weights_version));
  PT2_RETURN_IF_ERROR(ReadString(m, "weights_file", p, &e->weights_file));
  PT2_RETURN_IF_ERROR(ReadString(m, "weights_sha256", p, &e->weights_sha256));
  PT2_RETURN_IF_ERROR(ReadString(m, "isolation", p, &e->isolation));
  PT2_RETURN_IF_ERROR(
      ReadInt64(m, "weights_staging_budget_bytes", p, &e->weights_staging_budget_bytes));
  PT2_RETURN_IF_ERROR(ReadBatching(m, p, &e->dynamic_batching));
  return ReadDeclaredSignature(m, p, &e->signature);
}

// version_policy: latest: N | all | specific: [V, ...]
Status ReadVersionPolicy(const YAML::Node& m, VersionPolicy* out) {
  if (!Has(m, "version_policy")) return Status::Ok();
  const std::string p = "version_policy";
  const YAML::Node n = Get(m, "version_policy");
  if (n.IsScalar() && n.Scalar() == "all") {
    out->kind = VersionPolicy::Kind::kAll;
    return Status::Ok();
  }
  if (!n.IsMap() || n.size() != 1) {
    return Error(p, "expected 'all', {latest: N} or {specific: [V, ...]}");
  }
  PT2_RETURN_IF_ERROR(CheckMap(n, p, {"latest", "specific"}));
  if (Has(n, "latest")) {
    out->kind = VersionPolicy::Kind::kLatest;
    PT2_RETURN_IF_ERROR(ReadInt(n, "latest", p, &out->latest));
    if (out->latest < 1) return Error(Child(p, "latest"), "must be >= 1");
    return Status::Ok();
  }
  out->kind = VersionPolicy::Kind::kSpecific;
  const YAML::Node list = Get(n, "specific");
  if (!list.IsSequence() || list.size() == 0) {
    return Error(Child(p, "specific"), "expected a non-empty list of versions (>= 1)");
  }
  for (size_t i = 0; i < list.size(); ++i) {
    int64_t v = 0;
    if (!list[i].IsScalar() || !YAML::convert<int64_t>::decode(list[i], v) || v < 1) {
      return Error(Child(p, "specific") + "[" + std::to_string(i) + "]",
                   "expected a version number >= 1");
    }
    out->specific.push_back(v);
  }
  return Status::Ok();
}

Status ReadBatching(const YAML::Node& m, const std::string& p,
                    std::optional<BatchingEntry>* out) {
  if (!Has(m, "dynamic_batching")) return Status::Ok();
  const YAML::Node b = Get(m, "dynamic_batching");
  const std::string bp = Child(p, "dynamic_batching");
  BatchingEntry e;
  if (!b.IsNull()) {  // `dynamic_batching:` alone turns it on with defaults
    if (!b.IsMap()) return Error(bp, "expected a mapping, got " + std::string(KindName(b)));
    PT2_RETURN_IF_ERROR(CheckMap(b, bp, {"max_batch_size", "max_queue_delay_us",
                                         "preferred_batch_sizes", "preserve_ordering",
                                         "priority_levels", "default_priority_level",
                                         "priority_queue_sizes"}));
    PT2_RETURN_IF_ERROR(ReadInt64(b, "max_batch_size", bp, &e.max_batch_size));
    PT2_RETURN_IF_ERROR(ReadInt64(b, "max_queue_delay_us", bp, &e.max_queue_delay_us));
    PT2_RETURN_IF_ERROR(ReadInt64List(b, "preferred_batch_sizes", bp, &e.preferred_batch_sizes));
    PT2_RETURN_IF_ERROR(ReadBool(b, "preserve_ordering", bp, &e.preserve_ordering));
    PT2_RETURN_IF_ERROR(ReadInt(b, "priority_levels", bp, &e.priority_levels));
    PT2_RETURN_IF_ERROR(ReadInt(b, "default_priority_level", bp, &e.default_priority_level));
    PT2_RETURN_IF_ERROR(ReadInt64List(b, "priority_queue_sizes", bp, &e.priority_queue_sizes));
  }
  for (const auto& [key, v] : {std::pair<const char*, int64_t>{"max_batch_size", e.max_batch_size},
                               {"max_queue_delay_us", e.max_queue_delay_us},
                               {"priority_levels", e.priority_levels},
                               {"default_priority_level", e.default_priority_level}}) {
    if (v < 0) return Error(Child(bp, key), "must be >= 0, got " + std::to_string(v));
  }
  for (int64_t v : e.priority_queue_sizes) {
    if (v < 0) return Error(Child(bp, "priority_queue_sizes"), "entries must be >= 0");
  }
  *out = std::move(e);
  return Status::Ok();
}

Status ReadModels(const YAML::Node& list, ServerConfig* c) {
  if (!list || list.IsNull()) return Status::Ok();
  if (!list.IsSequence()) {
    return Error("models", "expected a list, got " + std::string(KindName(list)));
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string p = "models[" + std::to_string(i) + "]";
    const YAML::Node m = list[i];
    if (!m.IsMap()) return Error(p, "expected a mapping, got " + std::string(KindName(m)));
    PT2_RETURN_IF_ERROR(CheckMap(m, p, {"name", "path", "device", "num_runners",
                                        "max_queue_size", "timeout_ms", "cpu_threads",
                                        "weights_version", "weights_file", "weights_sha256",
                                        "isolation", "inputs", "outputs", "max_batch_size",
                                        "dynamic_batching", "weights_staging_budget_bytes"}));
    ModelEntry e;
    PT2_RETURN_IF_ERROR(ReadModelEntry(m, p, &e));
    c->models.push_back(std::move(e));
  }
  return Status::Ok();
}

void Resolve(const fs::path& base, std::string* path) {
  if (path->empty() || fs::path(*path).is_absolute()) return;
  *path = (base / *path).lexically_normal().string();
}

void ResolvePaths(std::string_view base_dir, ServerConfig* c) {
  if (base_dir.empty()) return;
  const fs::path base(base_dir);
  Resolve(base, &c->model_repository);
  Resolve(base, &c->admin_token_file);
  for (TlsConfig* t : {&c->inference_tls, &c->admin_tls}) {
    Resolve(base, &t->cert_file);
    Resolve(base, &t->key_file);
    Resolve(base, &t->client_ca_file);
  }
  for (ModelEntry& m : c->models) {
    Resolve(base, &m.path);
    Resolve(base, &m.weights_file);
  }
}

// ---- Validation helpers: return a problem description, "" when fine. ----

bool AllOf(std::string_view s, bool (*pred)(char)) {
  for (char ch : s) {
    if (!pred(ch)) return false;
  }
  return true;
}
bool IsDigit(char ch) { return ch >= '0' && ch <= '9'; }
bool IsAlnum(char ch) {
  return IsDigit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}
bool IsNameChar(char ch) { return IsAlnum(ch) || ch == '_' || ch == '.' || ch == '-'; }
bool IsHostChar(char ch) { return IsAlnum(ch) || ch == '.' || ch == '-' || ch == '_'; }
bool IsIpv6Char(char ch) {
  return IsDigit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') || ch == ':' ||
         ch == '.';
}

std::string PortProblem(std::string_view port) {
  if (port.empty() || port.size() > 5 || !AllOf(port, IsDigit) ||
      std::stoi(std::string(port)) < 1 || std::stoi(std::string(port)) > 65535) {
    return "port must be a number in 1..65535, got '" + std::string(port) + "'";
  }
  return "";
}

std::string AddressProblem(std::string_view addr, bool allow_unix) {
  constexpr std::string_view kForms = " (expected host:port, [ipv6]:port or unix:/path)";
  if (addr.substr(0, 5) == "unix:") {
    if (!allow_unix) return "unix sockets are not supported here, expected host:port";
    std::string_view path = addr.substr(5);
    if (path.size() < 2 || path[0] != '/') return "unix socket path must be absolute";
    if (path.size() > 107) return "unix socket path is longer than 107 bytes";
    return "";
  }
  std::string_view host, port;
  if (!addr.empty() && addr[0] == '[') {
    size_t close = addr.find(']');
    if (close == std::string_view::npos || close + 1 >= addr.size() || addr[close + 1] != ':') {
      return "malformed address '" + std::string(addr) + "'" + std::string(kForms);
    }
    host = addr.substr(1, close - 1);
    port = addr.substr(close + 2);
    if (host.empty() || !AllOf(host, IsIpv6Char)) {
      return "malformed IPv6 host in '" + std::string(addr) + "'";
    }
  } else {
    size_t colon = addr.rfind(':');
    if (colon == std::string_view::npos) {
      return "malformed address '" + std::string(addr) + "'" + std::string(kForms);
    }
    host = addr.substr(0, colon);
    port = addr.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return "IPv6 hosts need brackets, e.g. [::1]:8001; got '" + std::string(addr) + "'";
    }
    if (host.empty() || !AllOf(host, IsHostChar)) {
      return "malformed host in '" + std::string(addr) + "'" + std::string(kForms);
    }
  }
  return PortProblem(port);
}

std::string OneDeviceProblem(std::string_view device) {
  if (device == "auto") return "";
  std::string_view kind = device.substr(0, device.find(':'));
  if (kind != "cpu" && kind != "cuda" && kind != "xpu" && kind != "mps") {
    return "unknown device '" + std::string(device) +
           "' (expected auto, cpu, mps, cuda[:N], xpu[:N])";
  }
  if (kind.size() < device.size()) {
    std::string_view index = device.substr(kind.size() + 1);
    if (index.empty() || index.size() > 4 || !AllOf(index, IsDigit)) {
      return "malformed device index in '" + std::string(device) + "'";
    }
  }
  return "";
}

// One device, or a comma-separated list of accelerators ("cuda:0,cuda:1")
// to place one replica of the model on each.
std::string DeviceProblem(std::string_view devices) {
  if (devices.find(',') == std::string_view::npos) return OneDeviceProblem(devices);
  size_t start = 0;
  while (start <= devices.size()) {
    const size_t comma = std::min(devices.find(',', start), devices.size());
    const std::string_view one = devices.substr(start, comma - start);
    if (one == "auto" || one == "cpu" || one == "mps") {
      return "'" + std::string(one) + "' cannot be part of a device list (only cuda:N, xpu:N)";
    }
    std::string problem = OneDeviceProblem(one);
    if (!problem.empty()) return problem;
    start = comma + 1;
  }
  return "";
}

Status ValidateTls(const TlsConfig& tls, const std::string& path) {
  if (!tls.cert_file.empty() && tls.key_file.empty()) {
    return Error(path + ".key_file", "required when cert_file is set");
  }
  if (tls.cert_file.empty() && !tls.key_file.empty()) {
    return Error(path + ".cert_file", "required when key_file is set");
  }
  if (tls.cert_file.empty() && !tls.client_ca_file.empty()) {
    return Error(path + ".client_ca_file",
                 "client certificates need server TLS (cert_file and key_file)");
  }
  return Status::Ok();
}

bool IsEnvStart(char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '_';
}
bool IsEnvChar(char ch) { return IsEnvStart(ch) || IsDigit(ch); }

std::string Trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n\f\v";
  size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return "";
  size_t e = s.find_last_not_of(kSpace);
  return std::string(s.substr(b, e - b + 1));
}

Status ReadWholeFile(const std::string& path, std::string_view what, std::string* out) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound(std::string(what) + " '" + path + "' does not exist");
  if (fs::is_directory(path, ec)) {
    return InvalidArgument(std::string(what) + " '" + path + "' is a directory");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    int err = errno;
    std::string msg = "cannot read " + std::string(what) + " '" + path + "': " + std::strerror(err);
    return err == EACCES ? PermissionDenied(msg) : FailedPrecondition(msg);
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  *out = buf.str();
  return Status::Ok();
}

// Per-entry rules shared by the models list and repository config.yaml
// files; `p` is the key path ("models[1]").
Status ValidateModelEntry(const ModelEntry& m, const std::string& p) {
  std::string problem = DeviceProblem(m.device);
  if (!problem.empty()) return Error(Child(p, "device"), problem);
  if (m.num_runners < 1 || m.num_runners > 64) {
    return Error(Child(p, "num_runners"),
                 "must be in 1..64, got " + std::to_string(m.num_runners));
  }
  if (m.max_queue_size < 0) {
    return Error(Child(p, "max_queue_size"),
                 "must be >= 0, got " + std::to_string(m.max_queue_size));
  }
  if (m.weights_staging_budget_bytes < 0) {
    return Error(Child(p, "weights_staging_budget_bytes"),
                 "must be >= 0 (0 = no limit), got " +
                     std::to_string(m.weights_staging_budget_bytes));
  }
  if (m.timeout_ms < 0) {
    return Error(Child(p, "timeout_ms"), "must be >= 0 (0 = no deadline), got " +
                                        std::to_string(m.timeout_ms));
  }
  if (m.cpu_threads < 0 || m.cpu_threads > 1024) {
    return Error(Child(p, "cpu_threads"), "must be in 0..1024 (0 = the process default), got " +
                                         std::to_string(m.cpu_threads));
  }
  if (m.weights_version.empty()) return Error(Child(p, "weights_version"), "must not be empty");
  if (!m.weights_file.empty() && m.weights_version == "initial") {
    return Error(Child(p, "weights_version"),
                 "must name the version of weights_file '" + m.weights_file +
                     "' ('initial' is the package's compiled-in weights)");
  }
  if (m.weights_file.empty() && !m.weights_sha256.empty()) {
    return Error(Child(p, "weights_sha256"), "is set but weights_file is not");
  }
  if (!m.weights_sha256.empty() &&
      (m.weights_sha256.size() != 64 || !AllOf(m.weights_sha256, [](char ch) {
        return std::isxdigit(static_cast<unsigned char>(ch)) != 0;
      }))) {
    return Error(Child(p, "weights_sha256"),
                 "'" + m.weights_sha256 + "' is not a hex SHA-256 (64 hex digits)");
  }
  if (m.isolation != "in_process" && m.isolation != "process") {
    return Error(Child(p, "isolation"),
                 "must be 'in_process' or 'process', got '" + m.isolation + "'");
  }
  return Status::Ok();
}

}  // namespace

Status ValidateServerConfig(const ServerConfig& c) {
  struct Listener { std::string_view key; const std::string& addr; bool allow_unix; };
  const Listener listeners[] = {{"server.inference_address", c.inference_address, true},
                                {"server.admin_address", c.admin_address, true},
                                {"server.metrics_address", c.metrics_address, false}};
  if (c.inference_address.empty()) return Error("server.inference_address", "must not be empty");
  for (size_t i = 0; i < std::size(listeners); ++i) {
    const Listener& l = listeners[i];
    if (l.addr.empty()) continue;  // disabled
    std::string problem = AddressProblem(l.addr, l.allow_unix);
    if (!problem.empty()) return Error(l.key, problem);
    for (size_t j = 0; j < i; ++j) {
      if (listeners[j].addr == l.addr) {
        return Error(l.key, "'" + l.addr + "' is already used by " + std::string(listeners[j].key));
      }
    }
  }
  if (c.max_message_bytes < 1 || c.max_message_bytes > INT32_MAX) {
    return Error("server.max_message_bytes",
                 "must be in 1..2147483647, got " + std::to_string(c.max_message_bytes));
  }
  if (c.drain_timeout_ms < 0) {
    return Error("server.drain_timeout_ms",
                 "must be >= 0, got " + std::to_string(c.drain_timeout_ms));
  }
  if (c.weights_staging_budget_bytes < 0) {
    return Error("server.weights_staging_budget_bytes",
                 "must be >= 0 (0 = no limit), got " +
                     std::to_string(c.weights_staging_budget_bytes));
  }
  if (c.upload_idle_timeout_ms < 1 || c.upload_idle_timeout_ms > kMaxUploadIdleTimeoutMs) {
    return Error("server.upload_idle_timeout_ms",
                 "must be in 1.." + std::to_string(kMaxUploadIdleTimeoutMs) + ", got " +
                     std::to_string(c.upload_idle_timeout_ms));
  }
  if (c.drain_delay_ms < 0 || c.drain_delay_ms > kMaxDrainDelayMs) {
    return Error("server.drain_delay_ms", "must be in 0.." + std::to_string(kMaxDrainDelayMs) +
                                              ", got " + std::to_string(c.drain_delay_ms));
  }
  if (c.max_connection_age_ms < 0) {
    return Error("server.max_connection_age_ms",
                 "must be >= 0 (0 = unlimited), got " + std::to_string(c.max_connection_age_ms));
  }
  if (c.max_connection_age_grace_ms < 0) {
    return Error("server.max_connection_age_grace_ms",
                 "must be >= 0, got " + std::to_string(c.max_connection_age_grace_ms));
  }
  if (!c.admin_token_env.empty() &&
      !(IsEnvStart(c.admin_token_env[0]) && AllOf(c.admin_token_env, IsEnvChar))) {
    return Error("server.admin_auth.token_env",
                 "'" + c.admin_token_env + "' is not a valid environment variable name");
  }
  PT2_RETURN_IF_ERROR(ValidateTls(c.inference_tls, "server.tls.inference"));
  PT2_RETURN_IF_ERROR(ValidateTls(c.admin_tls, "server.tls.admin"));

  constexpr std::string_view kLevels[] = {"trace", "debug", "info", "warn",
                                          "error", "critical", "off"};
  if (std::find(std::begin(kLevels), std::end(kLevels), c.log_level) == std::end(kLevels)) {
    return Error("logging.level",
                 "unknown level '" + c.log_level +
                     "' (expected trace, debug, info, warn, error, critical, off)");
  }
  if (c.log_format != "text" && c.log_format != "json") {
    return Error("logging.format", "unknown format '" + c.log_format + "' (expected text or json)");
  }

  if (std::find(std::begin(kRepositoryModes), std::end(kRepositoryModes), c.repository_mode) ==
      std::end(kRepositoryModes)) {
    return Error("server.repository_mode",
                 "unknown mode '" + c.repository_mode + "' (expected explicit, all or poll)");
  }
  if (c.repository_mode != "explicit" && c.model_repository.empty()) {
    return Error("server.repository_mode",
                 "'" + c.repository_mode + "' needs server.model_repository");
  }
  if (std::find(std::begin(kSharedMemoryModes), std::end(kSharedMemoryModes), c.shared_memory) ==
      std::end(kSharedMemoryModes)) {
    return Error("server.shared_memory",
                 "unknown mode '" + c.shared_memory + "' (expected none or system)");
  }
  if (c.repository_poll_interval_ms < 100 || c.repository_poll_interval_ms > 86'400'000) {
    return Error("server.repository_poll_interval_ms",
                 "must be in 100..86400000, got " + std::to_string(c.repository_poll_interval_ms));
  }
  std::map<std::string, size_t, std::less<>> index_by_name;
  for (size_t i = 0; i < c.models.size(); ++i) {
    const ModelEntry& m = c.models[i];
    const std::string p = "models[" + std::to_string(i) + "]";
    if (m.name.empty()) return Error(p + ".name", "must not be empty");
    // The limits the servers apply to the same strings (common/limits.h).
    PT2_RETURN_IF_ERROR(CheckLength(p + ".name", m.name, kMaxModelNameBytes));
    PT2_RETURN_IF_ERROR(CheckLength(p + ".path", m.path, kMaxPathBytes));
    PT2_RETURN_IF_ERROR(CheckLength(p + ".weights_version", m.weights_version,
                                    kMaxVersionLabelBytes));
    PT2_RETURN_IF_ERROR(CheckLength(p + ".weights_file", m.weights_file, kMaxPathBytes));
    if (!AllOf(m.name, IsNameChar) || m.name == "." || m.name == "..") {
      return Error(p + ".name", "'" + m.name + "' has characters outside [A-Za-z0-9_.-]");
    }
    auto [it, inserted] = index_by_name.emplace(m.name, i);
    if (!inserted) {
      return Error(p + ".name", "duplicate model name '" + m.name + "' (also models[" +
                                    std::to_string(it->second) + "])");
    }
    if (m.path.empty()) return Error(p + ".path", "must not be empty");
    PT2_RETURN_IF_ERROR(ValidateModelEntry(m, p));
  }
  return Status::Ok();
}

StatusOr<ServerConfig> ParseServerConfig(std::string_view yaml_text, std::string_view origin,
                                         std::string_view base_dir) {
  const std::string where(origin);
  ServerConfig config;
  try {
    const YAML::Node root = YAML::Load(std::string(yaml_text));
    Status status = CheckMap(root, "", {"server", "logging", "models"});
    if (status.ok()) status = ReadServer(Get(root, "server"), &config);
    if (status.ok()) status = ReadLogging(Get(root, "logging"), &config);
    if (status.ok()) status = ReadModels(Get(root, "models"), &config);
    if (!status.ok()) return status.WithPrefix(where);
  } catch (const YAML::Exception& e) {
    // ParserException etc.: mark is 0-based; -1 when unknown.
    std::string pos = e.mark.is_null() ? "" : ":" + std::to_string(e.mark.line + 1) + ":" +
                                                  std::to_string(e.mark.column + 1);
    return InvalidArgument(where + pos + ": invalid YAML: " + e.msg);
  } catch (const std::exception& e) {
    return InvalidArgument(where + ": " + e.what());
  } catch (...) {
    return InvalidArgument(where + ": unknown error while parsing");
  }
  ResolvePaths(base_dir, &config);
  Status status = ValidateServerConfig(config);
  if (!status.ok()) return status.WithPrefix(where);
  return config;
}

StatusOr<ServerConfig> LoadServerConfigFile(const std::string& path) {
  std::string text;
  PT2_RETURN_IF_ERROR(ReadWholeFile(path, "config file", &text));
  std::error_code ec;
  fs::path abs = fs::absolute(path, ec);
  std::string base = ec ? fs::path(path).parent_path().string() : abs.parent_path().string();
  if (base.empty()) base = ".";
  return ParseServerConfig(text, path, base);
}

StatusOr<std::string> ResolveAdminToken(const ServerConfig& c) {
  std::string token, source;
  const char* env = c.admin_token_env.empty() ? nullptr : std::getenv(c.admin_token_env.c_str());
  if (env != nullptr && *env != '\0') {
    token = Trim(env);
    source = "environment variable " + c.admin_token_env;
  } else if (!c.admin_token_file.empty()) {
    std::string text;
    PT2_RETURN_IF_ERROR(ReadWholeFile(c.admin_token_file, "admin token file", &text));
    token = Trim(text);
    source = "admin token file '" + c.admin_token_file + "'";
  } else if (!c.admin_token_env.empty()) {
    return FailedPrecondition("admin token: environment variable " + c.admin_token_env +
                              " is unset or empty and no token_file is configured");
  } else {
    return std::string();  // no admin auth configured
  }
  if (token.empty()) return FailedPrecondition("admin token: " + source + " is empty");
  for (char ch : token) {
    if (ch < 0x20 || ch > 0x7e) {
      return FailedPrecondition(
          "admin token: " + source +
          " has non-printable characters (one line of printable ASCII expected)");
    }
  }
  return token;
}

StatusOr<RepositoryModelConfig> ParseRepositoryModelConfig(std::string_view yaml_text,
                                                           std::string_view origin,
                                                           std::string_view name) {
  const std::string where(origin);
  RepositoryModelConfig config;
  config.entry.name = std::string(name);
  try {
    const YAML::Node root = YAML::Load(std::string(yaml_text));
    // Not weights_file / weights_sha256: start-up weights are staged only for
    // configured models (Server::ApplyStartupWeights); push them after the load.
    Status status = CheckMap(root, "", {"name", "device", "num_runners", "max_queue_size",
                                        "timeout_ms", "cpu_threads", "weights_version",
                                        "isolation", "inputs", "outputs", "max_batch_size",
                                        "dynamic_batching", "version_policy",
                                        "weights_staging_budget_bytes"});
    if (status.ok()) status = ReadModelEntry(root, "", &config.entry);
    if (status.ok()) status = ReadVersionPolicy(root, &config.version_policy);
    if (status.ok() && config.entry.name != name) {
      status = Error("name", "'" + config.entry.name + "' differs from the folder's name '" +
                                 std::string(name) + "'");
    }
    if (status.ok()) status = ValidateModelEntry(config.entry, "");
    if (!status.ok()) return status.WithPrefix(where);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(where + ": invalid YAML: " + e.msg);
  }
  return config;
}

}  // namespace pt2serve
