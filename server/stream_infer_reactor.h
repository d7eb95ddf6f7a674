// The bidirectional ModelStreamInfer RPC (Triton's streaming extension, used
// by tritonclient's start_stream/async_stream_infer and perf_analyzer
// --streaming).
//
// Each request read from the stream is started on the model's runner pool as
// soon as it arrives; responses are written in completion order, one write
// outstanding at a time. A request that fails is answered with
// `error_message` and the stream continues. The RPC finishes OK once the
// client has half-closed and every request has been answered.
//
// Thread-safety: gRPC reactions and inference completions (pool threads) meet
// under mu_. Finish() is called once, outside mu_, and nothing touches the
// reactor after it (OnDone may delete it right away).
#pragma once

#include <grpcpp/support/server_callback.h>

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "kserve/grpc_service.pb.h"
#include "server/inference_core.h"

namespace pt2serve::server {

class StreamInferReactor final
    : public grpc::ServerBidiReactor<inference::ModelInferRequest,
                                     inference::ModelStreamInferResponse> {
 public:
  StreamInferReactor(InferenceCore& core, grpc::CallbackServerContext* ctx);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { delete this; }

 private:
  // Queues one response and starts writing if no write is outstanding.
  void Respond(std::unique_ptr<inference::ModelStreamInferResponse> response);
  // Finishes the RPC when reading is over and nothing is pending. Must be the
  // caller's last use of the reactor.
  void MaybeFinish();

  InferenceCore& core_;
  grpc::CallbackServerContext* const ctx_;
  inference::ModelInferRequest request_;  // the read target

  std::mutex mu_;  // guards everything below
  std::deque<std::unique_ptr<inference::ModelStreamInferResponse>> to_write_;  // front in flight
  bool writing_ = false;
  bool write_failed_ = false;  // the client went away: drop further responses
  bool reading_done_ = false;
  bool finished_ = false;
  int pending_ = 0;  // requests started and not answered yet
  std::vector<std::shared_ptr<PendingCall>> calls_;  // to cancel on OnCancel
};

}  // namespace pt2serve::server
