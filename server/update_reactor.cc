#include "server/update_reactor.h"

#include <google/protobuf/io/coded_stream.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>
#include <spdlog/fmt/fmt.h>

#include "common/limits.h"

#include "runtime/model.h"
#include "server/admin_service.h"
#include "server/logging.h"
#include "server/memory_convert.h"
#include "server/status_mapping.h"
#include "server/upload_codec.h"

namespace pt2serve::server {
namespace {

using google::protobuf::io::CodedInputStream;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

UpdateReactor::UpdateReactor(AdminService& service, grpc::CallbackServerContext* ctx,
                             grpc::ByteBuffer* response)
    : guard_(std::make_shared<UploadGuard>()), service_(service), ctx_(ctx), response_(response) {
  guard_->reactor = this;
  guard_->last_activity_ns = NowNs();
  std::lock_guard lock(guard_->mu);
  if (Status auth = service_.Authenticate(ctx_); !auth.ok()) {
    FinishLocked(ToGrpcStatus(auth));
    return;
  }
  // Watched from the start (under no model until the header names one), so a
  // stream that never sends its header is ended by the idle timeout too.
  if (!service_.AddUpload("", guard_)) {
    FinishLocked(ToGrpcStatus(Unavailable("the server is shutting down: no weight uploads")));
    return;
  }
  StartRead(&raw_);
}

void UpdateReactor::FinishLocked(const grpc::Status& status) {
  phase_ = Phase::kFinished;
  session_.reset();  // nothing staged unless committed; the writer slot is released
  model_ = ModelHandle();
  Finish(status);
}

void UpdateReactor::FailLocked(const Status& status) {
  Logger("admin")->warn("weight update of model '{}' rejected: {}", model_name_,
                        status.ToString());
  if (!model_name_.empty()) service_.RecordError(model_name_, "update", status);
  FinishLocked(ToGrpcStatus(status));
}

void UpdateReactor::Abort(const std::shared_ptr<UploadGuard>& guard, const std::string& why) {
  std::lock_guard lock(guard->mu);
  UpdateReactor* self = guard->reactor;
  if (!self || self->phase_ != Phase::kReceiving) return;
  self->abort_reason_ = why;
  // The outstanding read then completes with ok=false on a gRPC thread.
  self->ctx_->TryCancel();
}

void UpdateReactor::Expire(const std::shared_ptr<UploadGuard>& guard,
                           std::chrono::steady_clock::time_point idle_since,
                           const std::string& why) {
  std::lock_guard lock(guard->mu);
  UpdateReactor* self = guard->reactor;
  if (!self || self->phase_ != Phase::kReceiving) return;
  const auto since_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                            idle_since.time_since_epoch())
                            .count();
  if (guard->last_activity_ns.load() > since_ns) return;  // a message came meanwhile
  // Finishing with a read outstanding is allowed: the transport closes the
  // stream, the read completes with ok=false and OnReadDone sees kFinished.
  const std::string what = self->have_header_
                               ? "weight upload to model '" + self->model_name_ + "'"
                               : std::string("weight upload (no header received)");
  self->FailLocked(Aborted(what + " aborted: " + why + "; nothing was staged"));
}

void UpdateReactor::OnDone() {
  const std::shared_ptr<UploadGuard> guard = guard_;
  {
    std::lock_guard lock(guard->mu);
    guard->reactor = nullptr;
  }
  service_.RemoveUpload(guard);
  delete this;
}

void UpdateReactor::OnReadDone(bool ok) {
  const std::shared_ptr<UploadGuard> guard = guard_;  // outlives a nested OnDone
  std::lock_guard lock(guard->mu);
  if (phase_ != Phase::kReceiving) return;  // finished meanwhile; no more reads
  if (!ok) {  // half-close (or cancellation)
    if (!abort_reason_.empty()) {
      return FailLocked(Aborted((have_header_ ? "weight update of model '" + model_name_ + "'"
                                              : std::string("weight update")) +
                                " aborted: " + abort_reason_));
    }
    if (!have_header_) return FailLocked(InvalidArgument("stream ended before the header"));
    if (ctx_->IsCancelled()) return FailLocked(Cancelled("client cancelled the update"));
    if (options_.sha256_follows && !have_trailer_) {
      return FailLocked(InvalidArgument(
          "the header announced a trailer with the sha256 (sha256_in_trailer) but the stream "
          "ended without one"));
    }
    return CommitLocked();
  }
  guard->last_activity_ns = NowNs();
  if (Status status = OnMessage(); !status.ok()) return FailLocked(status);
  StartRead(&raw_);
}

Status UpdateReactor::OnMessage() {
  ++messages_;
  // Chunks (all but two messages of an upload) are read from gRPC's buffers
  // straight into their staging buffer: no intermediate protobuf string.
  if (session_ && !have_trailer_) {
    if (auto chunk = ScanChunk(raw_)) {
      ++chunks_;
      grpc::ProtoBufferReader reader(&raw_);
      CodedInputStream in(&reader);
      const Status written = in.Skip(chunk->data_at)
                                 ? session_->Write(chunk->name, chunk->offset, chunk->data_size,
                                                   [&](std::byte* dest) {
                                                     return in.ReadRaw(dest, static_cast<int>(
                                                                                 chunk->data_size));
                                                   })
                                 : Internal("cannot re-read a scanned chunk");
      raw_.Clear();
      return written;
    }
  }
  {
    grpc::ProtoBufferReader reader(&raw_);
    const bool parsed = request_.ParseFromZeroCopyStream(&reader);
    raw_.Clear();
    if (!parsed) {
      return InvalidArgument("message " + std::to_string(messages_) +
                             " of the UpdateConstantBuffer stream does not parse as an "
                             "UpdateConstantBufferRequest; nothing was staged");
    }
  }
  if (have_trailer_) return InvalidArgument("no message may follow the trailer");
  if (!have_header_) {
    if (request_.kind_case() != pt2serve::v1::UpdateConstantBufferRequest::kHeader) {
      return InvalidArgument("the first message of UpdateConstantBuffer must be a header");
    }
    have_header_ = true;
    PT2_RETURN_IF_ERROR(OnHeader(request_.header()));
    service_.RemoveUpload(guard_);  // re-filed under its model, for AbortUploads
    service_.AddUpload(model_name_, guard_);
    return Status::Ok();
  }
  switch (request_.kind_case()) {
    case pt2serve::v1::UpdateConstantBufferRequest::kChunk: return OnChunk(request_.chunk());
    case pt2serve::v1::UpdateConstantBufferRequest::kTrailer:
      have_trailer_ = true;
      return OnTrailer(request_.trailer());
    default:
      return InvalidArgument(
          "only the first message may be a header; later ones are chunks and a final trailer");
  }
}

Status UpdateReactor::OnHeader(const pt2serve::v1::UpdateHeader& header) {
  PT2_RETURN_IF_ERROR(CheckLength("header.model", header.model(), kMaxModelNameBytes));
  PT2_RETURN_IF_ERROR(CheckLength("header.version", header.version(), kMaxVersionLabelBytes));
  PT2_RETURN_IF_ERROR(CheckLength("header.server_path", header.server_path(), kMaxPathBytes));
  model_name_ = header.model();
  if (header.version().empty()) return InvalidArgument("header.version must not be empty");
  PT2_ASSIGN_OR_RETURN(model_, service_.registry_.Get(header.model()));
  options_.version = header.version();
  options_.sha256 = header.sha256();
  options_.sha256_follows = header.sha256_in_trailer();
  switch (header.source_case()) {
    case pt2serve::v1::UpdateHeader::kServerPath: {
      if (options_.sha256_follows) {
        return InvalidArgument("sha256_in_trailer is for streamed tensors, not a server_path");
      }
      PT2_ASSIGN_OR_RETURN(server_path_, service_.repository_.Resolve(header.server_path()));
      options_.source = header.server_path();
      return Status::Ok();
    }
    case pt2serve::v1::UpdateHeader::kTensors: {
      PT2_ASSIGN_OR_RETURN(std::vector<TensorSpec> specs, ManifestSpecs(header.tensors()));
      options_.source = "stream";
      PT2_ASSIGN_OR_RETURN(session_, model_->weights().BeginUpload(std::move(specs), options_));
      return Status::Ok();
    }
    default:
      return InvalidArgument("header must set either tensors or server_path");
  }
}

Status UpdateReactor::OnTrailer(const pt2serve::v1::UpdateTrailer& trailer) {
  if (!session_) return InvalidArgument("a trailer is not allowed with a server_path header");
  return session_->ExpectSha256(trailer.sha256());
}

Status UpdateReactor::OnChunk(const pt2serve::v1::TensorChunk& chunk) {
  if (!session_) {
    return InvalidArgument("chunks are not allowed when the header names a server_path");
  }
  ++chunks_;
  return session_->Write(chunk.name(), chunk.offset(), chunk.data().data(), chunk.data().size());
}

void UpdateReactor::CommitLocked() {
  phase_ = Phase::kCommitting;  // from here on, an unload waits for the commit
  Status started = service_.RunInBackground([this, guard = guard_] {
    // Only this thread touches the reactor while committing: no read is
    // outstanding, Abort() ignores this phase, and OnDone cannot come before
    // Finish. The guard is taken to finish.
    const auto start = std::chrono::steady_clock::now();
    Status status = session_ ? session_->Commit()
                             : model_->weights().StageFromFile(server_path_, options_);
    const auto took = std::chrono::steady_clock::now() - start;
    std::lock_guard lock(guard->mu);
    if (!status.ok()) return FailLocked(status);
    const auto st = model_->weights().status();
    pt2serve::v1::UpdateConstantBufferResponse response;
    response.set_model(model_name_);
    response.set_version(options_.version);
    response.set_staged_bytes(st.inactive.bytes);
    response.set_tensors(static_cast<uint32_t>(model_->info().constants.size()));
    response.set_fold_time_us(
        std::chrono::duration_cast<std::chrono::microseconds>(took).count());
    PushMemoryToProto(st.last_push, response.mutable_memory());
    {
      grpc::ProtoBufferWriter writer(response_, grpc::kProtoBufferWriterMaxBufferLength,
                                     static_cast<int>(response.ByteSizeLong()));
      if (!response.SerializeToZeroCopyStream(&writer)) {
        return FailLocked(Internal("cannot serialize the UpdateConstantBuffer response"));
      }
    }
    const PushMemory& push = st.last_push;
    const double write_s = std::chrono::duration<double>(push.write_time).count();
    const double transfer_s = std::chrono::duration<double>(push.transfer_time).count();
    auto rate = [](size_t bytes, double s) {
      return s > 0 ? static_cast<double>(bytes) / s / 1e9 : 0.0;
    };
    std::string transfer;
    if (push.device_staged && session_) {
      transfer = fmt::format("; waited {:.1f} ms for the last copies to the device",
                             transfer_s * 1e3);
    } else if (push.device_staged) {
      transfer = fmt::format(
          "; read, hashed and moved to the device through pinned memory in {:.1f} ms, "
          "{:.2f} GB/s",
          transfer_s * 1e3, rate(push.written_bytes, transfer_s));
    }
    if (push.device_copy_busy.count() > 0) {
      const double busy_s = std::chrono::duration<double>(push.device_copy_busy).count();
      transfer += fmt::format(
          "; host-to-device copies {:.2f} GB/s while copying ({} bytes in {:.1f} ms of copy "
          "time on the device)",
          rate(push.device_copy_bytes, busy_s), push.device_copy_bytes, busy_s * 1e3);
    }
    Logger("admin")->info(
        "model '{}': weights '{}' staged from {} ({} bytes, {} ms{}; copy into the inactive "
        "buffer {} bytes in {:.1f} ms, {:.2f} GB/s from {})",
        model_name_, options_.version, options_.source, st.inactive.bytes,
        std::chrono::duration_cast<std::chrono::milliseconds>(took).count(), transfer,
        push.written_bytes, write_s * 1e3, rate(push.written_bytes, write_s),
        push.device_staged    ? "its transient copy on the device"
        : push.pinned_staging ? "pinned host memory"
                              : "pageable host memory");
    FinishLocked(grpc::Status::OK);
  });
  if (!started.ok()) FailLocked(started);  // too many admin operations running
}

}  // namespace pt2serve::server
