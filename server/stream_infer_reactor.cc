#include "server/stream_infer_reactor.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include "server/kserve_service.h"
#include "server/status_mapping.h"

namespace pt2serve::server {

StreamInferReactor::StreamInferReactor(InferenceCore& core, const SharedMemoryRegistry* shm,
                                       grpc::CallbackServerContext* ctx)
    : core_(core), shm_(shm), ctx_(ctx) {
  std::lock_guard lock(mu_);
  MaybeReadLocked();
}

void StreamInferReactor::MaybeReadLocked() {
  if (reading_ || reading_done_ || write_failed_) return;
  const int outstanding = pending_ + static_cast<int>(to_write_.size());
  if (outstanding >= kMaxStreamOutstanding || outstanding_bytes_ >= kMaxStreamOutstandingBytes) {
    return;  // resumed when a response has been written
  }
  reading_ = true;
  StartRead(&read_buffer_);
}

void StreamInferReactor::OnReadDone(bool ok) {
  if (!ok) {  // half-close, or the stream broke
    {
      std::lock_guard lock(mu_);
      reading_ = false;
      reading_done_ = true;
    }
    return MaybeFinish();
  }
  const size_t wire_bytes = read_buffer_.Length();
  auto request = std::make_shared<inference::ModelInferRequest>();
  // Deserialize consumes read_buffer_, which is then free for the next read.
  const grpc::Status parsed =
      grpc::SerializationTraits<inference::ModelInferRequest>::Deserialize(&read_buffer_,
                                                                           request.get());
  uint64_t index = 0;
  {
    std::lock_guard lock(mu_);
    reading_ = false;
    index = ++messages_;
    if (!parsed.ok()) {
      reading_done_ = true;
      final_status_ = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "stream message " + std::to_string(index) +
                                       " is not a valid ModelInferRequest; the stream ends here "
                                       "(the requests before it were answered)");
    }
  }
  if (!parsed.ok()) return MaybeFinish();
  Start(std::move(request), wire_bytes);
  std::lock_guard lock(mu_);
  MaybeReadLocked();
}

void StreamInferReactor::Start(std::shared_ptr<inference::ModelInferRequest> request,
                               size_t wire_bytes) {
  const auto received = Clock::now();
  auto call = std::make_shared<PendingCall>();
  uint64_t key = 0;
  {
    std::lock_guard lock(mu_);
    ++pending_;
    outstanding_bytes_ += wire_bytes;
    key = next_key_++;
    calls_.emplace(key, call);
  }
  // The request must outlive its inference (its inputs point into it).
  auto answer = std::make_shared<inference::ModelStreamInferResponse>();
  // Holds the request's shared-memory mappings until the response is encoded.
  std::shared_ptr<SharedMemoryUse> use;
  if (shm_) use = std::make_shared<SharedMemoryUse>();
  Reply reply{[request, answer, use](InferResponse& result, int64_t version) {
                return EncodeInferResponse(*request, result, version, use.get(),
                                           *answer->mutable_infer_response());
              },
              [this, key, wire_bytes, request, answer](const Status& status) {
                if (!status.ok()) {
                  answer->Clear();
                  answer->set_error_message(ClientMessage(status.ToString()));
                  answer->mutable_infer_response()->set_model_name(request->model_name());
                  answer->mutable_infer_response()->set_id(request->id());
                }
                Respond(key, wire_bytes, *answer);
              }};
  InferRequest infer;
  int64_t version = kServingVersion;
  if (Status built = BuildInferRequest(*request, ctx_->deadline(), shm_, use.get(), infer, version);
      !built.ok()) {
    core_.RecordEarlyFailure(Protocol::kKServe, request->model_name(), request->id(), built,
                             received);
    reply.finish(built);
  } else {
    core_.Start(call, Protocol::kKServe, request->model_name(), version, std::move(infer), received,
                Clock::now() - received, std::move(reply));
  }
}

void StreamInferReactor::Respond(uint64_t key, size_t request_bytes,
                                 const inference::ModelStreamInferResponse& response) {
  Outgoing out;
  bool own_buffer = false;
  (void)grpc::SerializationTraits<inference::ModelStreamInferResponse>::Serialize(
      response, &out.bytes, &own_buffer);
  out.size = out.bytes.Length();
  {
    std::lock_guard lock(mu_);
    --pending_;
    outstanding_bytes_ -= request_bytes;
    calls_.erase(key);
    if (!write_failed_) {
      outstanding_bytes_ += out.size;
      to_write_.push_back(std::move(out));
      if (!writing_) {
        writing_ = true;
        StartWrite(&to_write_.front().bytes);
      }
      return;
    }
  }
  MaybeFinish();
}

void StreamInferReactor::OnWriteDone(bool ok) {
  {
    std::lock_guard lock(mu_);
    outstanding_bytes_ -= to_write_.front().size;
    to_write_.pop_front();
    if (!ok) {
      write_failed_ = true;
      for (const auto& out : to_write_) outstanding_bytes_ -= out.size;
      to_write_.clear();
      // No new read starts now; one in flight ends with ok == false.
      if (!reading_) reading_done_ = true;
    }
    if (!to_write_.empty()) {
      StartWrite(&to_write_.front().bytes);
      return;
    }
    writing_ = false;
    MaybeReadLocked();
  }
  MaybeFinish();
}

void StreamInferReactor::OnCancel() {
  std::vector<std::shared_ptr<PendingCall>> calls;
  {
    std::lock_guard lock(mu_);
    calls.reserve(calls_.size());
    for (const auto& [key, call] : calls_) calls.push_back(call);
  }
  for (const auto& call : calls) call->Cancel();  // queued requests leave the queue
}

void StreamInferReactor::MaybeFinish() {
  grpc::Status status;
  {
    std::lock_guard lock(mu_);
    if (finished_ || !reading_done_ || reading_ || pending_ > 0 || writing_) return;
    finished_ = true;
    status = final_status_;
  }
  Finish(status);
}

}  // namespace pt2serve::server
