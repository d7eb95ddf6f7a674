#include "server/update_reactor.h"

#include "runtime/model.h"
#include "server/admin_service.h"
#include "server/logging.h"
#include "server/status_mapping.h"
#include "server/tensor_codec.h"

namespace pt2serve::server {

UpdateReactor::UpdateReactor(AdminService& service, grpc::CallbackServerContext* ctx,
                             pt2serve::v1::UpdateConstantBufferResponse* response)
    : service_(service), ctx_(ctx), response_(response) {
  if (Status auth = service_.Authenticate(ctx_); !auth.ok()) {
    Finish(ToGrpcStatus(auth));
    return;
  }
  StartRead(&request_);
}

void UpdateReactor::Fail(const Status& status) {
  session_.reset();  // nothing staged; the writer slot is released
  Logger("admin")->warn("weight update of model '{}' rejected: {}", model_name_,
                        status.ToString());
  Finish(ToGrpcStatus(status));
}

void UpdateReactor::OnReadDone(bool ok) {
  if (!ok) {  // half-close (or cancellation)
    if (!have_header_) return Fail(InvalidArgument("stream ended before the header"));
    if (ctx_->IsCancelled()) return Fail(Cancelled("client cancelled the update"));
    return Commit();
  }
  Status status;
  if (!have_header_) {
    if (request_.kind_case() != pt2serve::v1::UpdateConstantBufferRequest::kHeader) {
      return Fail(InvalidArgument("the first message of UpdateConstantBuffer must be a header"));
    }
    status = OnHeader(request_.header());
    have_header_ = true;
  } else if (request_.kind_case() != pt2serve::v1::UpdateConstantBufferRequest::kChunk) {
    status = InvalidArgument("only the first message may be a header; later ones are chunks");
  } else {
    status = OnChunk(request_.chunk());
  }
  if (!status.ok()) return Fail(status);
  StartRead(&request_);
}

Status UpdateReactor::OnHeader(const pt2serve::v1::UpdateHeader& header) {
  model_name_ = header.model();
  if (header.version().empty()) return InvalidArgument("header.version must not be empty");
  PT2_ASSIGN_OR_RETURN(model_, service_.registry_.Get(header.model()));
  options_.version = header.version();
  options_.sha256 = header.sha256();
  switch (header.source_case()) {
    case pt2serve::v1::UpdateHeader::kServerPath: {
      PT2_ASSIGN_OR_RETURN(server_path_, service_.repository_.Resolve(header.server_path()));
      options_.source = header.server_path();
      return Status::Ok();
    }
    case pt2serve::v1::UpdateHeader::kTensors: {
      std::vector<TensorSpec> specs;
      for (const auto& entry : header.tensors().entries()) {
        TensorSpec spec;
        spec.name = entry.name();
        auto dtype = FromProtoDType(entry.dtype());
        if (!dtype.ok()) return dtype.status().WithPrefix("tensor '" + entry.name() + "'");
        spec.dtype = *dtype;
        spec.shape.assign(entry.shape().begin(), entry.shape().end());
        for (int64_t d : spec.shape) {
          if (d < 0) return InvalidArgument("tensor '" + entry.name() + "': negative dim");
        }
        const uint64_t expected = static_cast<uint64_t>(NumElements(spec.shape)) *
                                  DTypeSize(spec.dtype);
        if (entry.byte_size() != expected) {
          return InvalidArgument("tensor '" + entry.name() + "': byte_size " +
                                 std::to_string(entry.byte_size()) + " does not match shape " +
                                 ShapeToString(spec.shape) + " (" + std::to_string(expected) +
                                 " bytes)");
        }
        specs.push_back(std::move(spec));
      }
      options_.source = "stream";
      PT2_ASSIGN_OR_RETURN(session_, model_->weights().BeginUpload(std::move(specs), options_));
      return Status::Ok();
    }
    default:
      return InvalidArgument("header must set either tensors or server_path");
  }
}

Status UpdateReactor::OnChunk(const pt2serve::v1::TensorChunk& chunk) {
  if (!session_) {
    return InvalidArgument("chunks are not allowed when the header names a server_path");
  }
  ++chunks_;
  return session_->Write(chunk.name(), chunk.offset(), chunk.data().data(), chunk.data().size());
}

void UpdateReactor::Commit() {
  service_.RunInBackground([this] {
    const auto start = std::chrono::steady_clock::now();
    Status status = session_ ? session_->Commit()
                             : model_->weights().StageFromFile(server_path_, options_);
    const auto took = std::chrono::steady_clock::now() - start;
    session_.reset();
    if (!status.ok()) return Fail(status);
    const auto st = model_->weights().status();
    response_->set_model(model_name_);
    response_->set_version(options_.version);
    response_->set_staged_bytes(st.inactive.bytes);
    response_->set_tensors(static_cast<uint32_t>(model_->info().constants.size()));
    response_->set_fold_time_us(
        std::chrono::duration_cast<std::chrono::microseconds>(took).count());
    Logger("admin")->info("model '{}': weights '{}' staged from {} ({} bytes, {} ms)",
                          model_name_, options_.version, options_.source, st.inactive.bytes,
                          std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
    model_ = ModelHandle();
    Finish(grpc::Status::OK);
  });
}

}  // namespace pt2serve::server
