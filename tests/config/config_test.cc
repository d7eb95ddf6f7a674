#include "config/server_config.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace pt2serve {
namespace {

namespace fs = std::filesystem;

// A fresh directory, removed at scope exit.
struct TempDir {
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("pt2serve_config_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string Write(const std::string& name, const std::string& text) const {
    fs::path p = path / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
  }
  fs::path path;
};

// Sets an environment variable for the scope.
struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name(name) {
    if (value) ::setenv(name, value, 1); else ::unsetenv(name);
  }
  ~ScopedEnv() { ::unsetenv(name); }
  const char* name;
};

StatusOr<ServerConfig> Parse(const std::string& yaml) {
  return ParseServerConfig(yaml, "test.yaml");
}

// Parsing fails with INVALID_ARGUMENT whose message contains every fragment.
void ExpectError(const std::string& yaml, std::initializer_list<std::string> fragments) {
  INFO("yaml:\n" << yaml);
  auto result = Parse(yaml);
  REQUIRE_FALSE(result.ok());
  INFO("status: " << result.status());
  CHECK(result.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(result.status().message(), Catch::StartsWith("test.yaml"));
  for (const std::string& f : fragments) CHECK_THAT(result.status().message(), Catch::Contains(f));
}

// One model with the given extra fields (each "    key: value\n").
std::string Model(const std::string& fields) {
  return "models:\n  - name: m\n    path: m.pt2\n" + fields;
}

TEST_CASE("example config parses and shows every key") {
  auto config = LoadServerConfigFile(PT2SERVE_CONFIG_EXAMPLE);
  REQUIRE(config.ok());
  const fs::path dir = fs::path(PT2SERVE_CONFIG_EXAMPLE).parent_path();
  CHECK(config->inference_address == "127.0.0.1:8001");
  CHECK(config->admin_address == "127.0.0.1:8003");
  CHECK(config->metrics_address == "127.0.0.1:8002");
  CHECK(config->model_repository == (dir / "models").string());
  CHECK(config->max_message_bytes == 64 << 20);
  CHECK(config->log_level == "info");
  CHECK_FALSE(config->inference_tls.enabled());
  REQUIRE(config->models.size() == 1);
  const ModelEntry& m = config->models[0];
  CHECK(m.name == "mlp");
  CHECK(m.path == (dir / "models/mlp.pt2").string());
  CHECK(m.device == "auto");
  CHECK(m.num_runners == 1);
  CHECK(m.max_queue_size == 64);
  CHECK(m.weights_version == "initial");
}

TEST_CASE("empty document gives the defaults") {
  for (const char* text : {"", "# only a comment\n", "server:\nlogging:\nmodels:\n"}) {
    auto config = Parse(text);
    REQUIRE(config.ok());
    ServerConfig defaults;
    CHECK(config->inference_address == defaults.inference_address);
    CHECK(config->admin_address == "127.0.0.1:8003");
    CHECK(config->metrics_address == "127.0.0.1:8002");
    CHECK(config->model_repository.empty());
    CHECK(config->max_message_bytes == 64 << 20);
    CHECK(config->drain_timeout_ms == 30000);
    CHECK(config->upload_idle_timeout_ms == 30000);
    CHECK_FALSE(config->allow_repository_admin_on_inference_port);
    CHECK(config->log_level == "info");
    CHECK(config->log_format == "text");
    CHECK_FALSE(config->access_log);
    CHECK(config->models.empty());
  }
  CHECK(ValidateServerConfig(ServerConfig{}).ok());
}

TEST_CASE("model defaults and explicit values") {
  auto config = Parse(
      "models:\n"
      "  - {name: a, path: /m/a.pt2}\n"
      "  - {name: b.v2-x_y, path: b.pt2, device: 'cuda:1', num_runners: 4, max_queue_size: 0,\n"
      "     timeout_ms: 250, cpu_threads: 4, weights_version: v7}\n"
      "server: {admin_address: '', metrics_address: '', inference_address: '[::]:9000',\n"
      "         max_message_bytes: 1024, allow_repository_admin_on_inference_port: yes}\n"
      "logging: {level: off, format: json, access_log: true}\n");
  REQUIRE(config.ok());
  const ModelEntry& a = config->models[0];
  CHECK(a.path == "/m/a.pt2");
  CHECK(a.device == "auto");
  CHECK(a.num_runners == 1);
  CHECK(a.max_queue_size == 64);
  CHECK(a.timeout_ms == 0);
  CHECK(a.cpu_threads == 0);
  CHECK(a.weights_version == "initial");
  const ModelEntry& b = config->models[1];
  CHECK(b.path == "b.pt2");  // no base dir: left as written
  CHECK(b.device == "cuda:1");
  CHECK(b.num_runners == 4);
  CHECK(b.max_queue_size == 0);
  CHECK(b.timeout_ms == 250);
  CHECK(b.cpu_threads == 4);
  CHECK(b.weights_version == "v7");
  CHECK(config->admin_address.empty());
  CHECK(config->metrics_address.empty());
  CHECK(config->inference_address == "[::]:9000");
  CHECK(config->max_message_bytes == 1024);
  CHECK(config->allow_repository_admin_on_inference_port);
  CHECK(config->log_level == "off");
  CHECK(config->log_format == "json");
  CHECK(config->access_log);
}

TEST_CASE("declared model signature") {
  auto config = Parse(Model(
      "    inputs:\n"
      "      - {name: tokens, dtype: int64, shape: [-1, -1]}\n"
      "      - {name: mask, dtype: torch.float32, shape: [-1, 7]}\n"
      "    outputs: [{name: logits, dtype: float32, shape: [-1, 4]}]\n"
      "    max_batch_size: 8\n"));
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  const auto& sig = config->models[0].signature;
  REQUIRE(sig.has_value());
  REQUIRE(sig->inputs.size() == 2);
  CHECK(sig->inputs[0].name == "tokens");
  CHECK(sig->inputs[0].dtype == DType::kInt64);
  CHECK(sig->inputs[1].shape == Shape{-1, 7});
  CHECK(sig->outputs[0].name == "logits");
  CHECK(sig->max_batch_size == 8);
  CHECK_FALSE(Parse(Model(""))->models[0].signature.has_value());

  const std::string out = "    outputs: [{name: y, dtype: float32, shape: [-1]}]\n";
  ExpectError(Model(out), {"models[0]", "needs both 'inputs' and 'outputs'"});
  ExpectError(Model("    max_batch_size: 4\n"), {"needs both"});
  ExpectError(Model("    inputs: [{name: x, dtype: float31, shape: [1]}]\n" + out),
              {"models[0].inputs[0].dtype", "unknown dtype 'float31'"});
  ExpectError(Model("    inputs: [{name: x, dtype: float32, shape: [-2]}]\n" + out),
              {"models[0].inputs[0].shape[0]"});
  ExpectError(Model("    inputs: [{name: x, dtype: float32}]\n" + out),
              {"models[0].inputs[0].shape", "is required"});
  ExpectError(Model("    inputs: [{name: x, dtype: float32, shape: [1], min: 2}]\n" + out),
              {"models[0].inputs[0]", "min"});
  ExpectError(Model("    inputs: []\n" + out), {"models[0].inputs", "non-empty list"});
  auto ranged = Parse(Model(
      "    inputs: [{name: x, dtype: float32, shape: [-1, 4], dims: [{min: 1, max: 8}, {}]}]\n" +
      out));
  REQUIRE(ranged.ok());
  REQUIRE(ranged->models[0].signature->inputs[0].dims.size() == 2);
  CHECK(ranged->models[0].signature->inputs[0].dims[0].max == 8);
  CHECK(ranged->models[0].signature->inputs[0].dims[1].max == DimRange::kUnbounded);
  ExpectError(Model("    inputs: [{name: x, dtype: float32, shape: [-1, 4], dims: [{}]}]\n" + out),
              {"models[0].inputs[0].dims", "one {min, max} mapping per dim"});
  ExpectError(Model("    inputs: [{name: x, dtype: float32, shape: [-1], dims: [{min: 5, max: 2}]}]\n" +
                    out),
              {"models[0].inputs[0].dims[0]", "min <= max"});
  ExpectError(Model("    inputs: [{name: x, dtype: float32, shape: [1]}]\n" + out +
                    "    max_batch_size: -1\n"),
              {"models[0].max_batch_size"});
}

TEST_CASE("unknown keys are errors") {
  ExpectError("sever:\n  inference_address: ':1'\n", {"unknown key 'sever'", "server"});
  ExpectError("server:\n  inferance_address: 'x:1'\n",
              {"unknown key 'server.inferance_address'", "inference_address"});
  ExpectError("server:\n  tls:\n    inference:\n      cert: a\n", {"'server.tls.inference.cert'"});
  ExpectError("server:\n  admin_auth: {token: x}\n", {"'server.admin_auth.token'"});
  ExpectError("logging: {lvl: info}\n", {"'logging.lvl'"});
  ExpectError(Model("    num_runner: 2\n"), {"'models[0].num_runner'"});
  ExpectError("server:\n  drain_timeout_ms: 1\n  drain_timeout_ms: 2\n",
              {"server.drain_timeout_ms", "duplicate key"});
}

TEST_CASE("wrong types are errors") {
  ExpectError("server: [a, b]\n", {"server:", "expected a mapping", "list"});
  ExpectError("models: {name: a}\n", {"models:", "expected a list"});
  ExpectError("models: [a]\n", {"models[0]:", "expected a mapping"});
  ExpectError("server: {max_message_bytes: lots}\n",
              {"server.max_message_bytes", "expected an integer", "'lots'"});
  ExpectError("server: {drain_timeout_ms: 1.5}\n", {"server.drain_timeout_ms", "integer"});
  ExpectError("server: {drain_timeout_ms: 99999999999}\n",
              {"server.drain_timeout_ms", "out of range"});
  ExpectError("logging: {access_log: maybe}\n", {"logging.access_log", "true or false", "'maybe'"});
  ExpectError("server: {upload_idle_timeout_ms: 0}\n",
              {"server.upload_idle_timeout_ms", "must be in 1..3600000", "got 0"});
  ExpectError("server: {upload_idle_timeout_ms: 3600001}\n",
              {"server.upload_idle_timeout_ms", "must be in 1..3600000"});
  ExpectError("server: {inference_address: [a]}\n",
              {"server.inference_address", "expected a string"});
  ExpectError("server: {admin_address: }\n", {"server.admin_address", "no value"});
  ExpectError(Model("    num_runners: two\n"), {"models[0].num_runners", "integer"});
}

TEST_CASE("drain delay, connection age and start-up weights") {
  auto config = Parse(
      "server:\n  drain_delay_ms: 10000\n  max_connection_age_ms: 300000\n"
      "  max_connection_age_grace_ms: 5000\n" +
      Model("    weights_file: w/v2.safetensors\n    weights_version: v2\n"
            "    weights_sha256: " + std::string(64, 'a') + "\n"));
  REQUIRE(config.ok());
  CHECK(config->drain_delay_ms == 10000);
  CHECK(config->max_connection_age_ms == 300000);
  CHECK(config->max_connection_age_grace_ms == 5000);
  CHECK(config->models[0].weights_file == "w/v2.safetensors");
  CHECK(config->models[0].weights_sha256 == std::string(64, 'a'));
  ServerConfig defaults;
  CHECK(defaults.drain_delay_ms == 0);
  CHECK(defaults.max_connection_age_ms == 0);

  ExpectError("server: {drain_delay_ms: -1}\n", {"server.drain_delay_ms", "0..600000", "got -1"});
  ExpectError("server: {drain_delay_ms: 600001}\n", {"server.drain_delay_ms", "got 600001"});
  ExpectError("server: {max_connection_age_ms: -1}\n", {"server.max_connection_age_ms", ">= 0"});
  ExpectError("server: {max_connection_age_grace_ms: -2}\n",
              {"server.max_connection_age_grace_ms", ">= 0"});
  ExpectError(Model("    weights_file: w.safetensors\n"),
              {"models[0].weights_version", "must name the version of weights_file"});
  ExpectError(Model("    weights_sha256: abc\n"), {"models[0].weights_sha256", "weights_file"});
  ExpectError(Model("    weights_file: w.safetensors\n    weights_version: v\n"
                    "    weights_sha256: xyz\n"),
              {"models[0].weights_sha256", "'xyz'", "64 hex digits"});
}

TEST_CASE("malformed YAML reports the position") {
  ExpectError("server: {inference_address: 'x\n", {"invalid YAML"});
  ExpectError("models:\n  - name: a\n   path: b\n", {"test.yaml:3:", "invalid YAML"});
}

TEST_CASE("model value ranges") {
  ExpectError(Model("    num_runners: 0\n"), {"models[0].num_runners", "1..64", "got 0"});
  ExpectError(Model("    num_runners: 65\n"), {"models[0].num_runners", "got 65"});
  CHECK(Parse(Model("    num_runners: 64\n")).ok());
  ExpectError(Model("    max_queue_size: -1\n"), {"models[0].max_queue_size", ">= 0"});
  ExpectError(Model("    timeout_ms: -5\n"), {"models[0].timeout_ms", ">= 0"});
  ExpectError(Model("    cpu_threads: -1\n"), {"models[0].cpu_threads", "0..1024"});
  ExpectError(Model("    cpu_threads: 1025\n"), {"models[0].cpu_threads", "0..1024"});
  CHECK(Parse(Model("    cpu_threads: 1024\n")).ok());
  ExpectError(Model("    weights_version: ''\n"), {"models[0].weights_version", "empty"});
  ExpectError(Model("    device: gpu\n"), {"models[0].device", "unknown device 'gpu'"});
  ExpectError(Model("    device: 'cuda:x'\n"), {"models[0].device", "index"});
  CHECK(Parse(Model("    device: 'cuda:0,cuda:1'\n")).ok());
  ExpectError(Model("    device: 'cuda:0,cpu'\n"), {"models[0].device", "cannot be part of a device list"});
  ExpectError(Model("    device: 'cuda:0,'\n"), {"models[0].device", "unknown device ''"});
  ExpectError("models:\n  - name: m\n", {"models[0].path", "empty"});
  ExpectError("models:\n  - {name: a, path: a}\n  - {name: b, path: b, num_runners: 0}\n",
              {"models[1].num_runners"});
  for (const char* d : {"cpu", "cuda", "cuda:0", "xpu:1", "mps"}) {
    CHECK(Parse(Model(std::string("    device: '") + d + "'\n")).ok());
  }
}

TEST_CASE("model names") {
  ExpectError("models:\n  - {name: '', path: a}\n", {"models[0].name", "empty"});
  ExpectError("models:\n  - {path: a}\n", {"models[0].name", "empty"});
  ExpectError("models:\n  - {name: 'a/b', path: a}\n",
              {"models[0].name", "'a/b'", "[A-Za-z0-9_.-]"});
  ExpectError("models:\n  - {name: 'a b', path: a}\n", {"models[0].name"});
  ExpectError("models:\n  - {name: '..', path: a}\n", {"models[0].name"});
  ExpectError("models:\n  - {name: a, path: x}\n  - {name: b, path: y}\n  - {name: a, path: z}\n",
              {"models[2].name", "duplicate model name 'a'", "models[0]"});
}

TEST_CASE("server values") {
  ExpectError("logging: {level: verbose}\n", {"logging.level", "'verbose'"});
  ExpectError("logging: {format: xml}\n", {"logging.format", "'xml'"});
  ExpectError("server: {max_message_bytes: 0}\n", {"server.max_message_bytes"});
  ExpectError("server: {max_message_bytes: 4294967296}\n", {"server.max_message_bytes"});
  ExpectError("server: {drain_timeout_ms: -1}\n", {"server.drain_timeout_ms"});
  ExpectError("server: {admin_auth: {token_env: '1BAD-NAME'}}\n", {"server.admin_auth.token_env"});
}

TEST_CASE("listener addresses") {
  for (const char* good : {"0.0.0.0:1", "localhost:65535", "[::1]:8001", "[::]:80",
                           "unix:/run/pt2serve/admin.sock", "my-host.example.com:443"}) {
    INFO(good);
    CHECK(Parse(std::string("server: {admin_address: '") + good + "'}\n").ok());
  }
  struct Bad { const char* addr; const char* fragment; };
  for (Bad bad : {Bad{"localhost", "malformed address"}, Bad{"localhost:0", "1..65535"},
                  Bad{"localhost:65536", "1..65535"}, Bad{"localhost:http", "port"},
                  Bad{":8001", "malformed host"}, Bad{"::1:8001", "brackets"},
                  Bad{"[::1]8001", "malformed address"}, Bad{"[zz]:1", "IPv6"},
                  Bad{"unix:relative.sock", "absolute"}, Bad{"host name:1", "malformed host"}}) {
    ExpectError(std::string("server: {admin_address: '") + bad.addr + "'}\n",
                {"server.admin_address", bad.fragment});
  }
  ExpectError("server: {inference_address: ''}\n", {"server.inference_address", "empty"});
  ExpectError("server: {metrics_address: 'unix:/tmp/m.sock'}\n",
              {"server.metrics_address", "unix"});
  ExpectError("server: {admin_address: '127.0.0.1:8001'}\n",
              {"server.admin_address", "already used by server.inference_address"});
}

TEST_CASE("TLS pairs") {
  ExpectError("server: {tls: {inference: {cert_file: c.pem}}}\n",
              {"server.tls.inference.key_file", "required"});
  ExpectError("server: {tls: {admin: {key_file: k.pem}}}\n", {"server.tls.admin.cert_file"});
  ExpectError("server: {tls: {admin: {client_ca_file: ca.pem}}}\n",
              {"server.tls.admin.client_ca_file"});
  auto config = Parse("server: {tls: {admin: {cert_file: c, key_file: k, client_ca_file: ca}}}\n");
  REQUIRE(config.ok());
  CHECK(config->admin_tls.enabled());
  CHECK_FALSE(config->inference_tls.enabled());
}

TEST_CASE("relative paths resolve against the config file's directory") {
  TempDir dir;
  const std::string path = dir.Write("etc/pt2serve.yaml",
      "server:\n"
      "  model_repository: repo\n"
      "  admin_auth: {token_file: secrets/token}\n"
      "  tls:\n"
      "    inference: {cert_file: tls/c.pem, key_file: /abs/k.pem, client_ca_file: ../ca.pem}\n"
      "models:\n"
      "  - {name: a, path: models/a.pt2}\n"
      "  - {name: b, path: /abs/b.pt2}\n");
  auto config = LoadServerConfigFile(path);
  REQUIRE(config.ok());
  const fs::path etc = dir.path / "etc";
  CHECK(config->model_repository == (etc / "repo").string());
  CHECK(config->admin_token_file == (etc / "secrets/token").string());
  CHECK(config->inference_tls.cert_file == (etc / "tls/c.pem").string());
  CHECK(config->inference_tls.key_file == "/abs/k.pem");
  CHECK(config->inference_tls.client_ca_file == (dir.path / "ca.pem").string());
  CHECK(config->models[0].path == (etc / "models/a.pt2").string());
  CHECK(config->models[1].path == "/abs/b.pt2");

  auto parsed = ParseServerConfig("models: [{name: a, path: a.pt2}]\n", "inline", "/base");
  REQUIRE(parsed.ok());
  CHECK(parsed->models[0].path == "/base/a.pt2");
}

TEST_CASE("config file errors name the file") {
  TempDir dir;
  auto missing = LoadServerConfigFile((dir.path / "nope.yaml").string());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK_THAT(missing.status().message(), Catch::Contains("nope.yaml"));

  const std::string path =
      dir.Write("bad.yaml", "models:\n  - {name: a, path: a, num_runners: 0}\n");
  auto bad = LoadServerConfigFile(path);
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(bad.status().message(), Catch::StartsWith(path + ": models[0].num_runners"));
}

TEST_CASE("admin token resolution") {
  TempDir dir;
  ServerConfig config;
  SECTION("neither configured: no token") {
    auto token = ResolveAdminToken(config);
    REQUIRE(token.ok());
    CHECK(token->empty());
  }
  SECTION("file, trimmed") {
    config.admin_token_file = dir.Write("token", "  s3cret-token\n");
    auto token = ResolveAdminToken(config);
    REQUIRE(token.ok());
    CHECK(*token == "s3cret-token");
  }
  SECTION("env wins over file") {
    config.admin_token_file = dir.Write("token", "from-file\n");
    config.admin_token_env = "PT2SERVE_CONFIG_TEST_TOKEN";
    {
      ScopedEnv env("PT2SERVE_CONFIG_TEST_TOKEN", "from-env");
      CHECK(*ResolveAdminToken(config) == "from-env");
    }
    ScopedEnv empty("PT2SERVE_CONFIG_TEST_TOKEN", "");  // set but empty: the file is used
    CHECK(*ResolveAdminToken(config) == "from-file");
  }
  SECTION("missing file") {
    config.admin_token_file = (dir.path / "absent").string();
    auto token = ResolveAdminToken(config);
    CHECK(token.status().code() == StatusCode::kNotFound);
    CHECK_THAT(token.status().message(), Catch::Contains("absent"));
  }
  SECTION("empty file") {
    config.admin_token_file = dir.Write("token", " \n");
    CHECK(ResolveAdminToken(config).status().code() == StatusCode::kFailedPrecondition);
  }
  SECTION("two-line file") {
    config.admin_token_file = dir.Write("token", "a\nb\n");
    CHECK(ResolveAdminToken(config).status().code() == StatusCode::kFailedPrecondition);
  }
  SECTION("env configured but unset, no file") {
    config.admin_token_env = "PT2SERVE_CONFIG_TEST_TOKEN";
    ScopedEnv unset("PT2SERVE_CONFIG_TEST_TOKEN", nullptr);
    auto token = ResolveAdminToken(config);
    CHECK(token.status().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(token.status().message(), Catch::Contains("PT2SERVE_CONFIG_TEST_TOKEN"));
  }
}

TEST_CASE("ValidateServerConfig checks programmatic overrides") {
  ServerConfig config;
  config.models.push_back({.name = "m", .path = "m.pt2"});
  CHECK(ValidateServerConfig(config).ok());
  config.models[0].num_runners = 0;
  Status status = ValidateServerConfig(config);
  CHECK(status.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(status.message(), Catch::StartsWith("models[0].num_runners"));
  config.models[0].num_runners = 1;
  config.inference_address = "nohost";
  CHECK_THAT(ValidateServerConfig(config).message(), Catch::StartsWith("server.inference_address"));
}

TEST_CASE("model names, paths and versions have the servers' length limits") {
  ExpectError("models:\n  - name: " + std::string(257, 'm') + "\n    path: m.pt2\n",
              {"models[0].name is 257 bytes long (at most 256)"});
  ExpectError(Model("    weights_version: " + std::string(129, 'v') + "\n"),
              {"models[0].weights_version is 129 bytes long (at most 128)"});
  auto compressed = Parse("server: {allow_compressed_requests: true}\n");
  REQUIRE(compressed.ok());
  CHECK(compressed->allow_compressed_requests);
  CHECK_FALSE(Parse("")->allow_compressed_requests);
}

TEST_CASE("system shared memory is off unless set to system") {
  CHECK(Parse("").value().shared_memory == "none");
  auto on = Parse("server: {shared_memory: system}\n");
  REQUIRE(on.ok());
  CHECK(on->shared_memory == "system");
  ExpectError("server: {shared_memory: cuda}\n",
              {"server.shared_memory", "unknown mode 'cuda' (expected none or system)"});
}

TEST_CASE("repository mode and poll interval") {
  auto config = Parse("server:\n  model_repository: /m\n  repository_mode: poll\n"
                      "  repository_poll_interval_ms: 250\n");
  REQUIRE(config.ok());
  CHECK(config->repository_mode == "poll");
  CHECK(config->repository_poll_interval_ms == 250);
  CHECK(Parse("").value().repository_mode == "explicit");
  ExpectError("server:\n  model_repository: /m\n  repository_mode: sometimes\n",
              {"server.repository_mode", "unknown mode 'sometimes'"});
  ExpectError("server:\n  repository_mode: all\n",
              {"server.repository_mode", "needs server.model_repository"});
  ExpectError("server:\n  model_repository: /m\n  repository_poll_interval_ms: 5\n",
              {"server.repository_poll_interval_ms", "100..86400000"});
}

TEST_CASE("a repository model's config.yaml") {
  auto parsed = ParseRepositoryModelConfig(
      "num_runners: 3\ndevice: cpu\nversion_policy: {latest: 2}\n", "m/config.yaml", "m");
  REQUIRE(parsed.ok());
  CHECK(parsed->entry.name == "m");
  CHECK(parsed->entry.num_runners == 3);
  CHECK(parsed->version_policy.kind == VersionPolicy::Kind::kLatest);
  CHECK(parsed->version_policy.latest == 2);
  auto specific = ParseRepositoryModelConfig("version_policy: {specific: [1, 3]}\n", "c", "m");
  REQUIRE(specific.ok());
  CHECK(specific->version_policy.specific == std::vector<int64_t>{1, 3});
  CHECK(ParseRepositoryModelConfig("version_policy: all\n", "c", "m")->version_policy.kind ==
        VersionPolicy::Kind::kAll);
  CHECK(ParseRepositoryModelConfig("", "c", "m").ok());  // an empty file: the defaults

  auto error = [](const std::string& yaml) {
    auto r = ParseRepositoryModelConfig(yaml, "m/config.yaml", "m");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::StartsWith("m/config.yaml"));
    return r.status().message();
  };
  CHECK_THAT(error("path: x.pt2\n"), Catch::Contains("unknown key 'path'"));
  CHECK_THAT(error("weights_file: w.safetensors\n"), Catch::Contains("unknown key 'weights_file'"));
  CHECK_THAT(error("name: other\n"), Catch::Contains("differs from the folder's name 'm'"));
  CHECK_THAT(error("num_runners: 0\n"), Catch::Contains("num_runners") && Catch::Contains("1..64"));
  CHECK_THAT(error("version_policy: {latest: 0}\n"), Catch::Contains("version_policy.latest"));
  CHECK_THAT(error("version_policy: {specific: [0]}\n"),
             Catch::Contains("version_policy.specific[0]"));
  CHECK_THAT(error("version_policy: newest\n"), Catch::Contains("expected 'all'"));
  CHECK_THAT(error("version_policy: {latest: 1, specific: [1]}\n"),
             Catch::Contains("expected 'all'"));
  CHECK_THAT(error("num_runners: [\n"), Catch::Contains("invalid YAML"));
}

TEST_CASE("weight staging budgets: per model, server-wide, repository config") {
  auto config = Parse("server: {weights_staging_budget_bytes: 1000000}\n" +
                      Model("    weights_staging_budget_bytes: 4096\n"));
  INFO(config.status().ToString());
  REQUIRE(config.ok());
  CHECK(config->weights_staging_budget_bytes == 1000000);
  CHECK(config->models[0].weights_staging_budget_bytes == 4096);
  auto defaults = Parse(Model(""));
  REQUIRE(defaults.ok());
  CHECK(defaults->weights_staging_budget_bytes == 0);  // no limit
  CHECK(defaults->models[0].weights_staging_budget_bytes == 0);
  ExpectError("server: {weights_staging_budget_bytes: -1}\n",
              {"server.weights_staging_budget_bytes", "must be >= 0", "got -1"});
  ExpectError(Model("    weights_staging_budget_bytes: -5\n"),
              {"models[0].weights_staging_budget_bytes", "must be >= 0"});
  ExpectError(Model("    weights_staging_budget_bytes: lots\n"),
              {"models[0].weights_staging_budget_bytes", "integer"});
  auto repo = ParseRepositoryModelConfig("weights_staging_budget_bytes: 123\n", "c", "m");
  INFO(repo.status().ToString());
  REQUIRE(repo.ok());
  CHECK(repo->entry.weights_staging_budget_bytes == 123);
}

}  // namespace
}  // namespace pt2serve
