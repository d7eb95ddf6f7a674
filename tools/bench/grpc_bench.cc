// grpc_bench: closed-loop gRPC load generator for a running pt2serve daemon.
//
// N streams, each a thread with its own stub, keep exactly one unary request
// outstanding (send, wait for the response, send the next). Streams get
// their own channels, each with a distinct channel argument and a local
// subchannel pool, so that every channel opens its own HTTP/2 connection
// (gRPC would otherwise share one connection between identical channels);
// --connections K spreads the streams over K such channels instead.
//
//   grpc_bench --address 127.0.0.1:8001 --protocol native --model mlp
//       --batch 1 --streams 1,2,4,8,16 --seconds 5 --warmup 1 [--json out.jsonl]
//
// Protocols: `native` = pt2serve.v1.Inference/Run, `kserve` =
// inference.GRPCInferenceService/ModelInfer with raw_input_contents (what
// tritonclient sends). The model's inputs come from GetModel / ModelMetadata
// unless given with --input NAME:DTYPE:D0,D1,.. (repeatable); dynamic (-1)
// dims become --batch for the leading dim and 1 elsewhere.
//
// Prints one Markdown row per stream count (bench_util.h format) and, with
// --json FILE, appends one JSON object per row to FILE. Exit status 1 when
// any request failed or the model never became ready (--wait-only: just wait
// for READY, e.g. from a script that starts the daemon).
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kserve/grpc_service.grpc.pb.h"
#include "pt2serve/v1/inference.grpc.pb.h"
#include "server/tensor_codec.h"
#include "tools/bench/bench_util.h"

namespace pt2serve::bench {
namespace {

namespace v1 = pt2serve::v1;

struct Options {
  std::string address = "127.0.0.1:8001";
  std::string protocol = "native";
  std::string model = "mlp";
  std::vector<std::string> inputs;  // NAME:DTYPE:SHAPE overrides
  int64_t batch = 1;
  std::string streams = "1";
  int connections = 0;  // 0 = one channel per stream
  double seconds = 5;
  double warmup = 1;
  double wait_s = 30;
  int timeout_ms = 10000;
  std::string json;
  std::string label;
  bool no_header = false;
  bool wait_only = false;
};

// ----------------------------------------------------------- dtype names

// -------------------------------------------------------------- channels

// A channel with its own TCP connection: distinct args + local subchannel
// pool keep gRPC from reusing another channel's connection.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, int index) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("pt2serve.bench.channel_index", index);
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

void SetDeadline(grpc::ClientContext& ctx, int timeout_ms) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
}

std::string GrpcError(const grpc::Status& s) {
  return "grpc code " + std::to_string(static_cast<int>(s.error_code())) + ": " +
         s.error_message();
}

// ------------------------------------------------------------ model info

// Asks the server for the model's inputs, retrying until it is ready or
// `wait_s` passed (the daemon may still be loading).
StatusOr<std::vector<TensorSpec>> FetchInputs(const Options& o) {
  auto channel = MakeChannel(o.address, -1);
  const auto give_up = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(o.wait_s * 1000));
  std::string last;
  for (;;) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, 2000);
    std::vector<TensorSpec> specs;
    if (o.protocol == "native") {
      auto stub = v1::Inference::NewStub(channel);
      v1::GetModelRequest req;
      req.set_name(o.model);
      v1::ModelInfo info;
      grpc::Status s = stub->GetModel(&ctx, req, &info);
      if (s.ok() && info.state() == v1::READY) {
        for (const auto& in : info.inputs()) {
          auto dtype = server::FromProtoDType(in.dtype());
          if (!dtype.ok()) return dtype.status().WithPrefix("input '" + in.name() + "'");
          specs.push_back({in.name(), *dtype, Shape(in.shape().begin(), in.shape().end())});
        }
        return specs;
      }
      last = s.ok() ? "model state " + v1::ModelState_Name(info.state()) + " " + info.reason()
                    : GrpcError(s);
    } else {
      auto stub = inference::GRPCInferenceService::NewStub(channel);
      inference::ModelReadyRequest rreq;
      rreq.set_name(o.model);
      inference::ModelReadyResponse rresp;
      grpc::Status s = stub->ModelReady(&ctx, rreq, &rresp);
      if (s.ok() && rresp.ready()) {
        grpc::ClientContext mctx;
        SetDeadline(mctx, 2000);
        inference::ModelMetadataRequest mreq;
        mreq.set_name(o.model);
        inference::ModelMetadataResponse meta;
        s = stub->ModelMetadata(&mctx, mreq, &meta);
        if (!s.ok()) return Unavailable("ModelMetadata: " + GrpcError(s));
        for (const auto& in : meta.inputs()) {
          auto dtype = server::DTypeFromKServe(in.datatype());
          if (!dtype.ok()) return dtype.status().WithPrefix("input '" + in.name() + "'");
          specs.push_back({in.name(), *dtype, Shape(in.shape().begin(), in.shape().end())});
        }
        return specs;
      }
      last = s.ok() ? "model not ready" : GrpcError(s);
    }
    if (std::chrono::steady_clock::now() > give_up) {
      return Unavailable("model '" + o.model + "' at " + o.address + " not ready after " +
                         std::to_string(o.wait_s) + " s: " + last);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// ------------------------------------------------------------- the calls

struct Input {
  TensorSpec spec;  // concrete shape
  std::vector<std::byte> data;
};

BenchCall NativeCall(std::shared_ptr<grpc::Channel> channel, const Options& o,
                     const std::vector<Input>& inputs) {
  auto stub = std::shared_ptr<v1::Inference::Stub>(v1::Inference::NewStub(channel));
  auto request = std::make_shared<v1::RunRequest>();
  request->set_model(o.model);
  for (const Input& in : inputs) {
    v1::Tensor* t = request->add_inputs();
    t->set_name(in.spec.name);
    t->set_dtype(server::ToProtoDType(in.spec.dtype));
    for (int64_t d : in.spec.shape) t->add_shape(d);
    t->set_data(in.data.data(), in.data.size());
  }
  const int timeout_ms = o.timeout_ms;
  return [stub, request, timeout_ms](std::string* error) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout_ms);
    v1::RunResponse response;
    grpc::Status s = stub->Run(&ctx, *request, &response);
    if (!s.ok()) {
      *error = GrpcError(s);
      return false;
    }
    if (response.outputs_size() == 0) {
      *error = "response without outputs";
      return false;
    }
    return true;
  };
}

inference::ModelInferRequest MakeKServeRequest(const Options& o,
                                               const std::vector<Input>& inputs) {
  inference::ModelInferRequest request;
  request.set_model_name(o.model);
  for (const Input& in : inputs) {
    auto* t = request.add_inputs();
    t->set_name(in.spec.name);
    t->set_datatype(std::string(server::KServeDatatype(in.spec.dtype)));
    for (int64_t d : in.spec.shape) t->add_shape(d);
    request.add_raw_input_contents(in.data.data(), in.data.size());
  }
  return request;
}

BenchCall KServeCall(std::shared_ptr<grpc::Channel> channel, const Options& o,
                     const std::vector<Input>& inputs) {
  auto stub = std::shared_ptr<inference::GRPCInferenceService::Stub>(
      inference::GRPCInferenceService::NewStub(channel));
  auto request = std::make_shared<inference::ModelInferRequest>(MakeKServeRequest(o, inputs));
  const int timeout_ms = o.timeout_ms;
  return [stub, request, timeout_ms](std::string* error) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout_ms);
    inference::ModelInferResponse response;
    grpc::Status s = stub->ModelInfer(&ctx, *request, &response);
    if (!s.ok()) {
      *error = GrpcError(s);
      return false;
    }
    if (response.raw_output_contents_size() == 0) {
      *error = "response without raw_output_contents";
      return false;
    }
    return true;
  };
}

// KServe ModelStreamInfer: one bidirectional stream per bench stream, opened
// on first use and kept for the whole run; each call writes one request and
// reads its response (closed loop, like perf_analyzer --streaming with one
// request in flight). The stream is half-closed and finished when the last
// copy of the call is destroyed.
BenchCall KServeStreamCall(std::shared_ptr<grpc::Channel> channel, const Options& o,
                           const std::vector<Input>& inputs) {
  struct Stream {
    std::unique_ptr<inference::GRPCInferenceService::Stub> stub;
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<inference::ModelInferRequest,
                                             inference::ModelStreamInferResponse>>
        rw;
    inference::ModelInferRequest request;
    ~Stream() {
      if (!rw) return;
      rw->WritesDone();
      inference::ModelStreamInferResponse drain;
      while (rw->Read(&drain)) {
      }
      rw->Finish();
    }
  };
  auto stream = std::make_shared<Stream>();
  stream->stub = inference::GRPCInferenceService::NewStub(channel);
  stream->request = MakeKServeRequest(o, inputs);
  return [stream](std::string* error) {
    if (!stream->rw) stream->rw = stream->stub->ModelStreamInfer(&stream->ctx);
    if (!stream->rw->Write(stream->request)) {
      *error = "stream closed by the server: " + GrpcError(stream->rw->Finish());
      stream->rw.reset();
      return false;
    }
    inference::ModelStreamInferResponse response;
    if (!stream->rw->Read(&response)) {
      *error = "stream ended without a response: " + GrpcError(stream->rw->Finish());
      stream->rw.reset();
      return false;
    }
    if (!response.error_message().empty()) {
      *error = response.error_message();
      return false;
    }
    if (response.infer_response().raw_output_contents_size() == 0) {
      *error = "response without raw_output_contents";
      return false;
    }
    return true;
  };
}

// KServe ServerLive: the same RPC stack with no model work, i.e. the gRPC
// transport floor that inference latencies can be compared against.
BenchCall LiveCall(std::shared_ptr<grpc::Channel> channel, const Options& o) {
  auto stub = std::shared_ptr<inference::GRPCInferenceService::Stub>(
      inference::GRPCInferenceService::NewStub(channel));
  const int timeout_ms = o.timeout_ms;
  return [stub, timeout_ms](std::string* error) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout_ms);
    inference::ServerLiveResponse response;
    grpc::Status s = stub->ServerLive(&ctx, inference::ServerLiveRequest(), &response);
    if (!s.ok()) *error = GrpcError(s);
    return s.ok();
  };
}

int Main(int argc, char** argv) {
  Options o;
  CLI::App app{"grpc_bench: closed-loop gRPC load generator for pt2serve"};
  app.add_option("--address", o.address, "Inference address host:port")->capture_default_str();
  app.add_option("--protocol", o.protocol,
                 "native (pt2serve.v1 Run), kserve (ModelInfer), kserve-stream "
                 "(ModelStreamInfer, one open stream per bench stream) or live (ServerLive: "
                 "the gRPC floor, no model work)")
      ->check(CLI::IsMember({"native", "kserve", "kserve-stream", "live"}))
      ->capture_default_str();
  app.add_option("--model", o.model, "Model name")->capture_default_str();
  app.add_option("--input", o.inputs,
                 "NAME:DTYPE:D0,D1,.. (repeatable; default: ask the server)");
  app.add_option("--batch", o.batch, "Leading (batch) dim for dynamic inputs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--streams", o.streams, "Concurrent streams, a list runs each: 1,2,4,8,16")
      ->capture_default_str();
  app.add_option("--connections", o.connections,
                 "Channels (TCP connections) shared by the streams; 0 = one per stream")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--seconds", o.seconds, "Measured window per stream count")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", o.warmup, "Warm-up before each window, seconds")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--wait", o.wait_s, "Seconds to wait for the model to be READY")
      ->capture_default_str();
  app.add_option("--timeout-ms", o.timeout_ms, "Per-request deadline")->capture_default_str();
  app.add_option("--json", o.json, "Append one JSON object per row to this file");
  app.add_option("--label", o.label, "Protocol column text (default: the protocol)");
  app.add_flag("--no-header", o.no_header, "Do not print the Markdown table header");
  app.add_flag("--wait-only", o.wait_only, "Wait until the model is READY, send nothing, exit 0");
  CLI11_PARSE(app, argc, argv);

  auto stream_counts = ParseIntList(o.streams);
  if (!stream_counts.ok()) {
    std::fprintf(stderr, "grpc_bench: --streams %s\n", stream_counts.status().ToString().c_str());
    return 2;
  }
  std::vector<TensorSpec> specs;
  for (const std::string& text : o.inputs) {
    auto spec = ParseInputSpec(text);
    if (!spec.ok()) {
      std::fprintf(stderr, "grpc_bench: %s\n", spec.status().ToString().c_str());
      return 2;
    }
    specs.push_back(*spec);
  }
  if (o.protocol != "live") {
    // Also the readiness check when --input was given.
    auto fetched = FetchInputs(o);
    if (!fetched.ok()) {
      std::fprintf(stderr, "grpc_bench: %s\n", fetched.status().ToString().c_str());
      return 1;
    }
    if (o.wait_only) return 0;
    if (specs.empty()) specs = std::move(fetched).value();
  }
  std::vector<Input> inputs;
  uint64_t seed = 1;
  for (const TensorSpec& spec : specs) {
    Input in{spec, {}};
    in.spec.shape = ConcreteShape(spec.shape, o.batch);
    in.data = SyntheticData(spec.dtype, NumElements(in.spec.shape), seed++);
    inputs.push_back(std::move(in));
  }

  if (!o.no_header) std::printf("%s\n", MarkdownHeader().c_str());
  bool failed = false;
  for (int streams : *stream_counts) {
    // Fresh channels per stream count: every run starts with cold connections
    // that the warm-up then opens.
    const int nchannels = o.connections > 0 ? std::min(o.connections, streams) : streams;
    std::vector<std::shared_ptr<grpc::Channel>> channels;
    for (int i = 0; i < nchannels; ++i) channels.push_back(MakeChannel(o.address, i));
    DriverOptions d{streams, o.warmup, o.seconds};
    DriverResult r = RunClosedLoop(d, [&](int i) -> BenchCall {
      auto& channel = channels[i % nchannels];
      if (o.protocol == "live") return LiveCall(channel, o);
      if (o.protocol == "kserve-stream") return KServeStreamCall(channel, o, inputs);
      return o.protocol == "native" ? NativeCall(channel, o, inputs)
                                    : KServeCall(channel, o, inputs);
    });
    const int rc =
        EmitRow("grpc_bench", ResultRow{o.label.empty() ? o.protocol : o.label, o.model, o.batch, r},
                o.json);
    if (rc == 2) return 2;
    failed = failed || rc == 1;
  }
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace pt2serve::bench

int main(int argc, char** argv) { return pt2serve::bench::Main(argc, argv); }
