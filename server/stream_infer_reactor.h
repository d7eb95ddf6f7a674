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
// Flow control: the next message is read only while fewer than
// kMaxStreamOutstanding requests are outstanding (started, or answered and
// not yet written) and they hold less than kMaxStreamOutstandingBytes; a
// client that never reads its responses therefore stops being read, and
// HTTP/2 flow control pushes back on its sender.
//
// Messages are read and written as raw bytes and parsed here: a message that
// does not parse ends the stream with INVALID_ARGUMENT naming its position
// (after the requests before it are answered), instead of looking like a
// half-close.
//
// Cancellation (client cancel, deadline, broken stream) cancels every queued
// request of the stream and drops the unwritten responses.
//
// Thread-safety: gRPC reactions and inference completions (pool threads) meet
// under mu_. Finish() is called once, outside mu_, and nothing touches the
// reactor after it (OnDone may delete it right away).
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>

#include "kserve/grpc_service.pb.h"
#include "server/inference_core.h"
#include "server/shared_memory_registry.h"

namespace pt2serve::server {

inline constexpr int kMaxStreamOutstanding = 64;
inline constexpr size_t kMaxStreamOutstandingBytes = 64u << 20;

class StreamInferReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // `shm`: the system shared memory registry, null when the extension is off.
  StreamInferReactor(InferenceCore& core, const SharedMemoryRegistry* shm,
                     grpc::CallbackServerContext* ctx);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override { delete this; }

 private:
  struct Outgoing {
    grpc::ByteBuffer bytes;
    size_t size = 0;
  };
  // Starts `request` (message number `index`, `wire_bytes` long on the wire).
  void Start(std::shared_ptr<inference::ModelInferRequest> request, size_t wire_bytes);
  // Answers call `key`: queues `response` and starts writing if idle.
  void Respond(uint64_t key, size_t request_bytes,
               const inference::ModelStreamInferResponse& response);
  // Starts the next read if flow control allows. REQUIRES: mu_ held.
  void MaybeReadLocked();
  // Finishes the RPC when reading is over and nothing is pending. Must be the
  // caller's last use of the reactor.
  void MaybeFinish();

  InferenceCore& core_;
  const SharedMemoryRegistry* const shm_;
  grpc::CallbackServerContext* const ctx_;
  grpc::ByteBuffer read_buffer_;  // the read target; only touched by the read reaction

  std::mutex mu_;  // guards everything below
  std::deque<Outgoing> to_write_;  // front in flight while writing_
  bool writing_ = false;
  bool write_failed_ = false;  // the client went away: drop further responses
  bool reading_ = false;       // a read is in flight
  bool reading_done_ = false;  // no further read will be started
  bool finished_ = false;
  uint64_t messages_ = 0;      // messages read so far
  int pending_ = 0;            // requests started and not answered yet
  size_t outstanding_bytes_ = 0;  // of pending requests and unwritten responses
  grpc::Status final_status_ = grpc::Status::OK;
  uint64_t next_key_ = 0;
  std::map<uint64_t, std::shared_ptr<PendingCall>> calls_;  // unanswered, to cancel on OnCancel
};

}  // namespace pt2serve::server
