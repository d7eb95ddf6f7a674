#include "tools/pt2ctl/admin_client.h"

namespace pt2serve::ctl {
namespace {

// Plaintext without a CA; TLS trusting `ca` (plus a client certificate when
// `cert` and `key` are given) otherwise. All three are PEM contents.
std::shared_ptr<grpc::ChannelCredentials> Credentials(const std::string& ca,
                                                      const std::string& cert,
                                                      const std::string& key) {
  if (ca.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ca;
  ssl.pem_cert_chain = cert;
  ssl.pem_private_key = key;
  return grpc::SslCredentials(ssl);
}

std::shared_ptr<grpc::Channel> MakeChannel(
    const std::string& address, std::shared_ptr<grpc::ChannelCredentials> credentials,
    const std::string& tls_server_name = "") {
  grpc::ChannelArguments args;
  // Replicas dialled by IP (a headless Service) present the Service's name.
  if (!tls_server_name.empty()) args.SetSslTargetNameOverride(tls_server_name);
  // Responses are small; requests are bounded by the chunk size. Lift the
  // 4 MiB receive default anyway so large ListModels never fail locally.
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(-1);
  // Never replay a call behind the operator's back: each command's push or
  // swap happens at most once. (Calls are fail-fast: a refused connection
  // fails at once instead of waiting for the server to appear.)
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  return grpc::CreateCustomChannel(address, std::move(credentials), args);
}

}  // namespace

AdminClient::AdminClient(ClientOptions options)
    : options_(std::move(options)),
      admin_channel_(MakeChannel(options_.admin_address,
                                 Credentials(options_.tls_ca, options_.tls_cert,
                                             options_.tls_key),
                                 options_.tls_ca.empty() ? "" : options_.tls_server_name)),
      inference_channel_(MakeChannel(options_.inference_address,
                                     Credentials(options_.inference_tls_ca,
                                                 options_.inference_tls_cert,
                                                 options_.inference_tls_key))),
      admin_stub_(pt2serve::v1::Admin::NewStub(admin_channel_)),
      inference_stub_(pt2serve::v1::Inference::NewStub(inference_channel_)) {}

std::unique_ptr<grpc::ClientContext> AdminClient::NewContext(bool with_token) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  if (with_token && !options_.token.empty()) {
    ctx->AddMetadata("authorization", "Bearer " + options_.token);
  }
  return ctx;
}

std::unique_ptr<grpc::ClientContext> AdminClient::NewAdminContext() const {
  return NewContext(true);
}

Outcome AdminClient::Classify(const grpc::Status& status, grpc::Channel& channel,
                              const std::string& address) {
  if (status.ok()) return Outcome();
  // A status the server sent leaves the channel READY. Connection failures
  // (refused, unresolvable, lost, or the deadline passed while connecting)
  // leave it IDLE, CONNECTING or TRANSIENT_FAILURE.
  const bool reached = channel.GetState(false) == GRPC_CHANNEL_READY;
  return Outcome::FromRpc(status, reached, address);
}

Outcome AdminClient::AdminOutcome(const grpc::Status& status) const {
  return Classify(status, *admin_channel_, options_.admin_address);
}

Outcome AdminClient::ListModels(pt2serve::v1::ListModelsResponse* response) {
  auto ctx = NewContext(false);
  const grpc::Status status =
      inference_stub_->ListModels(ctx.get(), pt2serve::v1::ListModelsRequest(), response);
  return Classify(status, *inference_channel_, options_.inference_address);
}

Outcome AdminClient::GetModel(const std::string& name, pt2serve::v1::ModelInfo* response) {
  auto ctx = NewContext(false);
  pt2serve::v1::GetModelRequest request;
  request.set_name(name);
  const grpc::Status status = inference_stub_->GetModel(ctx.get(), request, response);
  return Classify(status, *inference_channel_, options_.inference_address);
}

Outcome AdminClient::LoadModel(const pt2serve::v1::LoadModelRequest& request,
                               pt2serve::v1::LoadModelResponse* response) {
  auto ctx = NewAdminContext();
  return AdminOutcome(admin_stub_->LoadModel(ctx.get(), request, response));
}

Outcome AdminClient::UnloadModel(const std::string& name) {
  pt2serve::v1::UnloadModelRequest request;
  request.set_name(name);
  pt2serve::v1::UnloadModelResponse response;
  auto ctx = NewAdminContext();
  return AdminOutcome(admin_stub_->UnloadModel(ctx.get(), request, &response));
}

Outcome AdminClient::Swap(const std::string& model, const std::string& expected_version,
                          pt2serve::v1::SwapResponse* response,
                          const std::string& expected_active) {
  pt2serve::v1::SwapRequest request;
  request.set_model(model);
  request.set_expected_version(expected_version);
  request.set_expected_active_version(expected_active);
  auto ctx = NewAdminContext();
  return AdminOutcome(admin_stub_->SwapConstantBuffer(ctx.get(), request, response));
}

Outcome AdminClient::Rollback(const std::string& model, pt2serve::v1::SwapResponse* response) {
  pt2serve::v1::RollbackRequest request;
  request.set_model(model);
  auto ctx = NewAdminContext();
  return AdminOutcome(admin_stub_->Rollback(ctx.get(), request, response));
}

Outcome AdminClient::FreeInactive(const std::string& model,
                                  pt2serve::v1::FreeInactiveResponse* response) {
  pt2serve::v1::FreeInactiveRequest request;
  request.set_model(model);
  auto ctx = NewAdminContext();
  return AdminOutcome(admin_stub_->FreeInactiveConstantBuffer(ctx.get(), request, response));
}

Outcome AdminClient::GetStatus(const std::string& model,
                               pt2serve::v1::ConstantBufferStatus* response) {
  pt2serve::v1::ConstantBufferStatusRequest request;
  request.set_model(model);
  auto ctx = NewAdminContext();
  return AdminOutcome(admin_stub_->GetConstantBufferStatus(ctx.get(), request, response));
}

}  // namespace pt2serve::ctl
