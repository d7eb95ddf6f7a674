#include "tools/pt2ctl/server_check.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>

#include "kserve/grpc_service.grpc.pb.h"

namespace pt2serve::ctl {
namespace {

// Bytes per element of a KServe datatype; 0 for BYTES and unknown types.
size_t ElementSize(const std::string& datatype) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"UINT8", 1}, {"INT8", 1}, {"UINT16", 2}, {"INT16", 2}, {"FP16", 2},
      {"BF16", 2}, {"UINT32", 4}, {"INT32", 4}, {"FP32", 4}, {"UINT64", 8}, {"INT64", 8},
      {"FP64", 8}};
  auto it = sizes.find(datatype);
  return it == sizes.end() ? 0 : it->second;
}

Outcome Refused(const std::string& message) {
  return Outcome::FromRpc(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, message), true, "");
}

}  // namespace

Outcome CheckServer(const ClientOptions& options, const std::string& model, CheckReport* report) {
  // AdminClient builds the inference channel with its TLS settings; its
  // admin channel is never used here.
  AdminClient client(options);
  report->model = model;
  auto stub = inference::GRPCInferenceService::NewStub(client.inference_channel());
  auto context = [&] {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + options.timeout);
    return ctx;
  };
  auto classify = [&](const grpc::Status& s) { return client.InferenceOutcome(s); };

  inference::ServerReadyResponse ready;
  if (auto s = stub->ServerReady(context().get(), {}, &ready); !s.ok()) return classify(s);
  if (!ready.ready()) return Refused("server " + options.inference_address + " is not ready");

  inference::ModelMetadataRequest meta_request;
  meta_request.set_name(model);
  inference::ModelMetadataResponse meta;
  if (auto s = stub->ModelMetadata(context().get(), meta_request, &meta); !s.ok()) {
    return classify(s);
  }
  inference::ModelInferRequest request;
  request.set_model_name(model);
  for (const auto& in : meta.inputs()) {
    const size_t element = ElementSize(in.datatype());
    if (element == 0) return Refused("input '" + in.name() + "' has type " + in.datatype() +
                                     ", which the check cannot fill");
    auto* tensor = request.add_inputs();
    tensor->set_name(in.name());
    tensor->set_datatype(in.datatype());
    size_t count = 1;
    for (int64_t d : in.shape()) {
      const int64_t dim = d < 0 ? 1 : d;
      tensor->add_shape(dim);
      count *= static_cast<size_t>(dim);
    }
    request.add_raw_input_contents(std::string(count * element, '\0'));
  }
  inference::ModelInferResponse response;
  const auto t0 = std::chrono::steady_clock::now();
  if (auto s = stub->ModelInfer(context().get(), request, &response); !s.ok()) return classify(s);
  report->infer_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  if (response.outputs_size() != meta.outputs_size() ||
      response.raw_output_contents_size() != response.outputs_size()) {
    return Refused("model '" + model + "' returned " + std::to_string(response.outputs_size()) +
                   " outputs, its metadata declares " + std::to_string(meta.outputs_size()));
  }
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& out = response.outputs(i);
    const auto& declared = meta.outputs(i);
    if (out.name() != declared.name() || out.shape_size() != declared.shape_size()) {
      return Refused("output " + std::to_string(i) + " is '" + out.name() + "' of rank " +
                     std::to_string(out.shape_size()) + ", declared '" + declared.name() +
                     "' of rank " + std::to_string(declared.shape_size()));
    }
    size_t count = 1;
    for (int64_t d : out.shape()) count *= static_cast<size_t>(d);
    const std::string& raw = response.raw_output_contents(i);
    if (raw.size() != count * ElementSize(out.datatype())) {
      return Refused("output '" + out.name() + "' carries " + std::to_string(raw.size()) +
                     " bytes for " + std::to_string(count) + " " + out.datatype() + " elements");
    }
    auto finite = [&](auto zero) {
      using T = decltype(zero);
      for (size_t k = 0; k < count; ++k) {
        T v;
        std::memcpy(&v, raw.data() + k * sizeof(T), sizeof(T));
        if (!std::isfinite(v)) return false;
      }
      return true;
    };
    if ((out.datatype() == "FP32" && !finite(0.0f)) || (out.datatype() == "FP64" && !finite(0.0))) {
      return Refused("output '" + out.name() + "' holds NaN or Inf for an all-zero input");
    }
  }
  report->outputs = static_cast<size_t>(response.outputs_size());
  if (auto it = response.parameters().find("weights_version"); it != response.parameters().end()) {
    report->weights_version = it->second.string_param();
  }
  return Outcome();
}

}  // namespace pt2serve::ctl
