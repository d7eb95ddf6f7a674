#include "server/inference_core.h"

#include "common/limits.h"
#include "server/logging.h"

namespace pt2serve::server {
namespace {

int64_t BatchSize(const InferRequest& request) {
  if (request.inputs.empty() || request.inputs[0].shape.empty()) return 1;
  return request.inputs[0].shape[0];
}

// Longest runtime error text a client gets.
constexpr size_t kMaxRuntimeErrorBytes = 200;

// A runtime failure as a client sees it: its first line, cut before any
// backtrace, with path-like words replaced, at most kMaxRuntimeErrorBytes.
// Only INTERNAL and UNKNOWN are rewritten; the other codes carry messages the
// server wrote for the client.
Status ForClient(const Status& status) {
  if (status.code() != StatusCode::kInternal && status.code() != StatusCode::kUnknown) {
    return status;
  }
  std::string_view first = status.message();
  first = first.substr(0, first.find('\n'));
  if (auto at = first.find("Exception raised from"); at != std::string_view::npos) {
    first = first.substr(0, at);
  }
  std::string text;
  size_t pos = 0;
  while (pos < first.size()) {
    const size_t end = std::min(first.find(' ', pos), first.size());
    const std::string_view word = first.substr(pos, end - pos);
    text += word.find('/') != std::string_view::npos ? "<path>" : std::string(word);
    if (end < first.size()) text += ' ';
    pos = end + 1;
  }
  if (text.size() > kMaxRuntimeErrorBytes) text = text.substr(0, kMaxRuntimeErrorBytes) + "...";
  return Status(status.code(), text + " (details in the server log)");
}

}  // namespace

void PendingCall::Cancel() {
  std::shared_ptr<ModelHandle> model;
  RunnerPool::Ticket ticket = 0;
  {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    model = model_;
    ticket = ticket_;
  }
  if (model && ticket) (*model)->CancelQueued(ticket);
}

Deadline DeadlineFromSystem(std::chrono::system_clock::time_point deadline) {
  using std::chrono::system_clock;
  if (deadline >= system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return kNoDeadline;
  }
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(deadline -
                                                                    system_clock::now());
}

InferenceCore::InferenceCore(ModelRegistry& registry, Metrics& metrics, StatsTable& stats,
                             bool access_log)
    : registry_(registry),
      metrics_(metrics),
      stats_(stats),
      access_log_(access_log),
      access_logger_(Logger("access")) {}

std::string InferenceCore::MetricLabel(const std::string& model, ModelStats* stats) const {
  // A request that reached a model (stats given) needs no registry lookup.
  if (stats || registry_.Contains(model)) return model;
  return std::string(kUnknownModelLabel);
}

void InferenceCore::Record(Protocol protocol, const std::string& model, const std::string& id,
                           const Status& status, const RequestTiming& timing,
                           Clock::time_point received, ModelStats* stats) {
  const auto total = Clock::now() - received;
  metrics_.RecordRequest(MetricLabel(model, stats), protocol, status.code(), timing, total);
  if (stats && !status.ok()) stats->RecordFailure(total);
  if (access_log_) {
    // Client strings are escaped (no forged lines) and cut short.
    access_logger_->info("{} model={} id={} code={} total_us={} queue_us={} compute_us={}{}{}",
                         ProtocolName(protocol), Printable(model, kMaxModelNameBytes),
                         Printable(id, kMaxRequestIdBytes), StatusCodeName(status.code()),
                         std::chrono::duration_cast<std::chrono::microseconds>(total).count(),
                         std::chrono::duration_cast<std::chrono::microseconds>(timing.queue).count(),
                         std::chrono::duration_cast<std::chrono::microseconds>(timing.compute).count(),
                         status.ok() ? "" : " error=",
                         Printable(status.message(), kMaxClientMessageBytes));
  }
}

void InferenceCore::RecordEarlyFailure(Protocol protocol, const std::string& model,
                                       const std::string& id, const Status& status,
                                       Clock::time_point received) {
  auto stats = stats_.Find(model);
  Record(protocol, model, id, status, {}, received, stats.get());
}

void InferenceCore::Start(const std::shared_ptr<PendingCall>& call, Protocol protocol,
                          const std::string& model, int64_t version, InferRequest request,
                          Clock::time_point received, std::chrono::nanoseconds decode_time,
                          Reply reply) {
  auto handle = registry_.Get(model, version);
  if (!handle.ok()) {
    Record(protocol, model, request.id, handle.status(), {}, received, nullptr);
    reply.finish(handle.status());
    return;
  }
  auto shared = std::make_shared<ModelHandle>(std::move(handle).value());
  auto stats = stats_.Get(model);
  const int64_t batch = BatchSize(request);
  const std::string id = request.id;
  {
    std::lock_guard lock(call->mu_);
    if (call->cancelled_) {
      Status cancelled = Cancelled("request cancelled by the client");
      Record(protocol, model, id, cancelled, {}, received, stats.get());
      reply.finish(cancelled);
      return;
    }
    call->model_ = shared;
  }
  // `shared` rides along in the callback: the model cannot be unloaded until
  // the reply is written.
  auto on_done = [this, shared, stats, protocol, model, id, batch, received, decode_time,
                  reply = std::move(reply)](StatusOr<InferResponse> result) mutable {
    if (!result.ok()) {
      const Status shown = ForClient(result.status());
      if (shown.message() != result.status().message()) {
        Logger("inference")->warn("model '{}' request '{}' failed: {}", model,
                                  Printable(id, kMaxRequestIdBytes),
                                  result.status().message());
      }
      Record(protocol, model, id, shown, {}, received, stats.get());
      reply.finish(shown);
      return;
    }
    InferResponse& response = *result;
    const auto encode_start = Clock::now();
    if (Status written = reply.encode(response, shared->version()); !written.ok()) {
      Record(protocol, model, id, written, response.timing, received, stats.get());
      reply.finish(written);
      return;
    }
    const auto encoded = Clock::now();
    RequestTimes times;
    times.total = encoded - received;
    times.queue = response.timing.queue;
    times.input = decode_time;
    times.infer = response.timing.compute;
    times.output = encoded - encode_start;
    stats->RecordSuccess(times, static_cast<uint64_t>(batch), response.batch_rows,
                         response.counts_execution);
    if (response.counts_execution) metrics_.RecordBatch(model, response.batch_rows);
    Record(protocol, model, id, Status::Ok(), response.timing, received, stats.get());
    reply.finish(Status::Ok());
  };
  const RunnerPool::Ticket ticket = (*shared)->InferAsync(std::move(request), std::move(on_done));
  bool cancel_now = false;
  {
    std::lock_guard lock(call->mu_);
    call->ticket_ = ticket;
    cancel_now = call->cancelled_;
  }
  if (cancel_now && ticket) (*shared)->CancelQueued(ticket);
}

}  // namespace pt2serve::server
