// AdminClient: pt2ctl's connection to one pt2serve daemon.
//
// Wraps the Admin service (admin address, bearer token on every call) and the
// read-only Inference.ListModels/GetModel (inference address, no token). Every unary
// call gets the configured deadline and returns an Outcome that already
// tells "the server refused" (exit 1) from "the server is unreachable"
// (exit 3): a failed call counts as unreachable when its channel is not
// connected afterwards (connection refused, name not resolvable, connection
// lost, or the deadline passed while still connecting).
//
// Thread-safety: not thread-safe; pt2ctl makes one call at a time.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "pt2serve/v1/admin.grpc.pb.h"
#include "pt2serve/v1/inference.grpc.pb.h"
#include "tools/pt2ctl/outcome.h"

namespace pt2serve::ctl {

struct ClientOptions {
  std::string admin_address = "127.0.0.1:8003";
  std::string inference_address = "127.0.0.1:8001";
  // Bearer token for the admin API; admin calls are sent without one if empty
  // (the server then answers UNAUTHENTICATED).
  std::string token;
  // Deadline of each unary call, and of a whole UpdateConstantBuffer stream.
  std::chrono::milliseconds timeout{30'000};
  // TLS for the admin channel (PEM contents): when tls_ca is set the channel
  // uses TLS and trusts that CA; tls_cert + tls_key add a client certificate
  // (mTLS). The inference channel (`models list`) has its own set, since the
  // server configures its two listeners separately.
  std::string tls_ca, tls_cert, tls_key;
  // With tls_ca: the name the admin server's certificate must carry, when the
  // address is an IP (replicas found through a headless Service). "" = host.
  std::string tls_server_name;
  std::string inference_tls_ca, inference_tls_cert, inference_tls_key;
};

class AdminClient {
 public:
  explicit AdminClient(ClientOptions options);

  // Inference.ListModels / GetModel on the inference address.
  Outcome ListModels(pt2serve::v1::ListModelsResponse* response);
  Outcome GetModel(const std::string& name, pt2serve::v1::ModelInfo* response);

  Outcome LoadModel(const pt2serve::v1::LoadModelRequest& request,
                    pt2serve::v1::LoadModelResponse* response);
  Outcome UnloadModel(const std::string& name);
  // Compare-and-swap when `expected_active` is set (SwapRequest).
  Outcome Swap(const std::string& model, const std::string& expected_version,
               pt2serve::v1::SwapResponse* response, const std::string& expected_active = "");
  Outcome Rollback(const std::string& model, pt2serve::v1::SwapResponse* response);
  Outcome FreeInactive(const std::string& model, pt2serve::v1::FreeInactiveResponse* response);
  Outcome GetStatus(const std::string& model, pt2serve::v1::ConstantBufferStatus* response);

  // For streaming calls (WeightPusher): a context with token and deadline
  // set, the stub, and the classification of the final status.
  std::unique_ptr<grpc::ClientContext> NewAdminContext() const;
  pt2serve::v1::Admin::Stub& admin_stub() { return *admin_stub_; }
  Outcome AdminOutcome(const grpc::Status& status) const;

  const ClientOptions& options() const { return options_; }
  // The inference channel (ServerCheck) and the classification of its calls.
  std::shared_ptr<grpc::Channel> inference_channel() const { return inference_channel_; }
  Outcome InferenceOutcome(const grpc::Status& status) const {
    return Classify(status, *inference_channel_, options_.inference_address);
  }

 private:
  std::unique_ptr<grpc::ClientContext> NewContext(bool with_token) const;
  static Outcome Classify(const grpc::Status& status, grpc::Channel& channel,
                          const std::string& address);

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> admin_channel_;
  std::shared_ptr<grpc::Channel> inference_channel_;
  std::unique_ptr<pt2serve::v1::Admin::Stub> admin_stub_;
  std::unique_ptr<pt2serve::v1::Inference::Stub> inference_stub_;
};

}  // namespace pt2serve::ctl
