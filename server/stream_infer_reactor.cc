#include "server/stream_infer_reactor.h"

#include <algorithm>

#include "server/kserve_service.h"

namespace pt2serve::server {

StreamInferReactor::StreamInferReactor(InferenceCore& core, grpc::CallbackServerContext* ctx)
    : core_(core), ctx_(ctx) {
  StartRead(&request_);
}

void StreamInferReactor::OnReadDone(bool ok) {
  if (!ok) {  // half-close, or the stream broke
    {
      std::lock_guard lock(mu_);
      reading_done_ = true;
    }
    return MaybeFinish();
  }
  const auto received = Clock::now();
  // The request must outlive its inference (its inputs point into it), while
  // request_ is reused for the next read.
  auto request = std::make_shared<inference::ModelInferRequest>(std::move(request_));
  request_.Clear();
  auto call = std::make_shared<PendingCall>();
  {
    std::lock_guard lock(mu_);
    ++pending_;
    std::erase_if(calls_, [](const std::shared_ptr<PendingCall>& c) { return c.use_count() == 1; });
    calls_.push_back(call);
  }
  auto answer = std::make_shared<inference::ModelStreamInferResponse>();
  Reply reply{[request, answer](InferResponse& result, int64_t version) {
                EncodeInferResponse(*request, result, version, *answer->mutable_infer_response());
              },
              [this, request, answer](const Status& status) {
                auto out = std::make_unique<inference::ModelStreamInferResponse>(
                    std::move(*answer));
                if (!status.ok()) {
                  out->Clear();
                  out->set_error_message(status.ToString());
                  out->mutable_infer_response()->set_model_name(request->model_name());
                  out->mutable_infer_response()->set_id(request->id());
                }
                Respond(std::move(out));
              }};
  InferRequest infer;
  int64_t version = kServingVersion;
  if (Status built = BuildInferRequest(*request, ctx_->deadline(), infer, version); !built.ok()) {
    core_.RecordEarlyFailure(Protocol::kKServe, request->model_name(), request->id(), built,
                             received);
    reply.finish(built);
  } else {
    core_.Start(call, Protocol::kKServe, request->model_name(), version, std::move(infer), received,
                Clock::now() - received, std::move(reply));
  }
  StartRead(&request_);
}

void StreamInferReactor::Respond(std::unique_ptr<inference::ModelStreamInferResponse> response) {
  {
    std::lock_guard lock(mu_);
    --pending_;
    if (!write_failed_) {
      to_write_.push_back(std::move(response));
      if (!writing_) {
        writing_ = true;
        StartWrite(to_write_.front().get());
      }
      return;
    }
  }
  MaybeFinish();
}

void StreamInferReactor::OnWriteDone(bool ok) {
  {
    std::lock_guard lock(mu_);
    to_write_.pop_front();
    if (!ok) {
      write_failed_ = true;
      to_write_.clear();
    }
    if (!to_write_.empty()) {
      StartWrite(to_write_.front().get());
      return;
    }
    writing_ = false;
  }
  MaybeFinish();
}

void StreamInferReactor::OnCancel() {
  std::vector<std::shared_ptr<PendingCall>> calls;
  {
    std::lock_guard lock(mu_);
    calls = calls_;
  }
  for (const auto& call : calls) call->Cancel();  // queued requests leave the queue
}

void StreamInferReactor::MaybeFinish() {
  {
    std::lock_guard lock(mu_);
    if (finished_ || !reading_done_ || pending_ > 0 || writing_) return;
    finished_ = true;
  }
  Finish(grpc::Status::OK);
}

}  // namespace pt2serve::server
