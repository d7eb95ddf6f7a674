#include "runtime/worker_replica.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "runtime/extraction_dirs.h"
#include "runtime/shared_memory.h"
#include "runtime/worker_channel.h"
#include "runtime/worker_protocol.h"

extern char** environ;

namespace pt2serve {

namespace wp = worker_protocol;
using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

namespace {

// How long a request that saw its worker's channel close waits for the
// supervisor to learn why, and how long an unloading model waits for its
// worker to exit before it is killed.
constexpr auto kDeathReportWait = std::chrono::seconds(2);
constexpr auto kStopWait = std::chrono::seconds(5);
// Restart back-off: a crash within kCrashLoopWindow of the last start
// doubles the delay (from kMinBackoff up to kMaxBackoff); otherwise none.
constexpr auto kCrashLoopWindow = std::chrono::seconds(10);
constexpr auto kMinBackoff = std::chrono::milliseconds(100);
constexpr auto kMaxBackoff = std::chrono::milliseconds(5000);
// A request still inside its worker this long after its deadline means the
// worker is hung (a kernel that never returns): it is killed and restarted.
constexpr auto kHungGrace = std::chrono::seconds(2);

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = strsignal(sig);
    return "was killed by signal " + std::to_string(sig) + " (" + (name ? name : "?") + ")";
  }
  return "stopped (status " + std::to_string(status) + ")";
}

// Reaps `pid`, then deletes the package extraction directories it left
// behind (a worker that crashed or was killed never removes its own).
int WaitForExit(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  RemoveStaleExtractionDirs();
  return status;
}

}  // namespace

struct WorkerReplica::Process {
  pid_t pid = 0;
  WorkerChannel control;
  WorkerChannel fatal;  // read end of the worker's last words (non-blocking)
  std::vector<WorkerChannel> runs;  // [slot]
  struct Arena {
    SharedMemory in;   // written here, read by the worker
    SharedMemory out;  // written by the worker, read here
  };
  std::vector<Arena> arenas;  // [slot]; arena i is used only by the request holding slot i
  // Set before the daemon kills a hung worker (see kHungGrace), for the reason.
  std::atomic<bool> killed_as_hung{false};
  // Guarded by WorkerReplica::mu_: set by the supervisor once it reaped the process.
  bool dead = false;
  std::string death;

  void Shutdown() const {
    control.Shutdown();
    for (const auto& r : runs) r.Shutdown();
  }
};

std::string WorkerExecutable() {
  if (const char* env = std::getenv("PT2SERVE_WORKER"); env && *env) return env;
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    auto sibling = self.parent_path() / "pt2serve-worker";
    if (std::filesystem::exists(sibling, ec)) return sibling.string();
  }
#ifdef PT2SERVE_WORKER_BUILD_PATH
  return PT2SERVE_WORKER_BUILD_PATH;
#else
  return "pt2serve-worker";
#endif
}

WorkerReplica::WorkerReplica(WorkerOptions options) : options_(std::move(options)) {}

StatusOr<std::unique_ptr<WorkerReplica>> WorkerReplica::Start(WorkerOptions options) {
  if (options.executable.empty()) options.executable = WorkerExecutable();
  if (options.num_runners == 0) return InvalidArgument("num_runners must be at least 1");
  std::unique_ptr<WorkerReplica> replica(new WorkerReplica(std::move(options)));
  PT2_ASSIGN_OR_RETURN(auto first, replica->Spawn());
  replica->process_ = first;
  replica->supervisor_ = std::thread([r = replica.get(), first] { r->SupervisorLoop(first); });
  return replica;
}

WorkerReplica::~WorkerReplica() {
  std::shared_ptr<Process> current;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    current = process_;
    listener_ = nullptr;
  }
  cv_.notify_all();
  // The worker exits when its channels close.
  if (current) current->Shutdown();
  {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, kStopWait, [&] { return supervisor_done_; })) {
      if (pid_t pid = newest_pid_.load(); pid > 0) kill(pid, SIGKILL);
    }
  }
  if (supervisor_.joinable()) supervisor_.join();
}

StatusOr<std::shared_ptr<WorkerReplica::Process>> WorkerReplica::Spawn() {
  const size_t n = options_.num_runners;
  auto process = std::make_shared<Process>();
  std::vector<WorkerChannel> child_ends;
  PT2_ASSIGN_OR_RETURN(auto control, WorkerChannel::CreatePair());
  process->control = std::move(control.first);
  child_ends.push_back(std::move(control.second));
  PT2_ASSIGN_OR_RETURN(auto fatal, WorkerChannel::CreatePair());
  process->fatal = std::move(fatal.first);
  child_ends.push_back(std::move(fatal.second));
  for (size_t i = 0; i < n; ++i) {
    PT2_ASSIGN_OR_RETURN(auto run, WorkerChannel::CreatePair());
    process->runs.push_back(std::move(run.first));
    child_ends.push_back(std::move(run.second));
  }
  process->arenas.resize(n);
  fcntl(process->fatal.fd(), F_SETFL, O_NONBLOCK);

  // Move the child's ends above any descriptor number they are dup2'ed to,
  // so no file action overwrites a source that a later one reads.
  std::vector<WorkerChannel> high;
  for (auto& end : child_ends) {
    int fd = fcntl(end.fd(), F_DUPFD_CLOEXEC, 100);
    if (fd < 0) return ResourceExhausted(std::string("dup: ") + std::strerror(errno));
    high.emplace_back(fd);
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  for (size_t i = 0; i < high.size(); ++i) {
    posix_spawn_file_actions_adddup2(&actions, high[i].fd(), wp::kControlFd + static_cast<int>(i));
  }
  std::vector<std::string> args = {options_.executable,
                                   "--model", options_.model_name,
                                   "--package", options_.path,
                                   "--device", options_.device,
                                   "--runners", std::to_string(n),
                                   "--cpu-threads", std::to_string(options_.cpu_threads),
                                   "--parent", std::to_string(getpid())};
  if (options_.declared_signature) {
    args.push_back("--signature");
    args.push_back(options_.declared_signature->ToJson());
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, options_.executable.c_str(), &actions, nullptr, argv.data(),
                             environ);
  posix_spawn_file_actions_destroy(&actions);
  high.clear();
  child_ends.clear();
  if (rc != 0) {
    return FailedPrecondition("cannot start the worker process '" + options_.executable +
                              "' for model '" + options_.model_name + "': " + std::strerror(rc));
  }
  process->pid = pid;
  newest_pid_.store(pid);

  auto hello = process->control.Receive();
  if (!hello.ok()) {
    const int status = WaitForExit(pid);
    std::string words;
    if (auto last = process->fatal.Receive(); last.ok()) words = last->body.value("message", "");
    return Internal("the worker process for model '" + options_.model_name + "' " +
                    DescribeExit(status) + " while loading" + (words.empty() ? "" : ": " + words));
  }
  Status loaded = wp::StatusFromJson(hello->body.value("status", json::object()));
  if (!loaded.ok()) {
    WaitForExit(pid);  // it exits after reporting
    return loaded;
  }
  PT2_ASSIGN_OR_RETURN(PackageInfo info, wp::PackageInfoFromJson(hello->body.at("info")));
  if (info_.path.empty()) info_ = std::move(info);
  return process;
}

void WorkerReplica::SetListener(std::function<void()> listener) {
  std::lock_guard lock(mu_);
  listener_ = std::move(listener);
}

void WorkerReplica::NotifyListener() {
  std::function<void()> listener;
  {
    std::lock_guard lock(mu_);
    listener = listener_;
  }
  if (listener) listener();
}

pid_t WorkerReplica::pid() const {
  std::lock_guard lock(mu_);
  return process_ ? process_->pid : 0;
}

Availability WorkerReplica::availability() const {
  std::lock_guard lock(mu_);
  return availability_;
}

std::string WorkerReplica::availability_reason() const {
  std::lock_guard lock(mu_);
  return reason_;
}

uint64_t WorkerReplica::restarts() const {
  std::lock_guard lock(mu_);
  return restarts_;
}

void WorkerReplica::SupervisorLoop(std::shared_ptr<Process> process) {
  auto started = SteadyClock::now();
  std::chrono::milliseconds backoff{0};
  while (true) {
    const int status = WaitForExit(process->pid);
    std::string words;
    if (auto last = process->fatal.Receive(); last.ok()) words = last->body.value("message", "");
    if (process->killed_as_hung) {
      words = "killed as hung by the daemon: no answer " + std::to_string(kHungGrace.count()) +
              " s after a request's deadline";
    }
    const std::string death = "worker process (pid " + std::to_string(process->pid) + ") " +
                              DescribeExit(status) + (words.empty() ? "" : ": " + words);
    {
      std::lock_guard lock(mu_);
      process->dead = true;
      process->death = death;
      process_.reset();
      if (stopping_) {
        supervisor_done_ = true;
        cv_.notify_all();
        return;
      }
      availability_ = Availability::kRestarting;
      reason_ = death;
    }
    cv_.notify_all();
    NotifyListener();

    const bool crash_loop = SteadyClock::now() - started < kCrashLoopWindow;
    backoff = crash_loop ? std::clamp(backoff * 2, std::chrono::milliseconds(kMinBackoff),
                                      std::chrono::milliseconds(kMaxBackoff))
                         : std::chrono::milliseconds(0);
    std::shared_ptr<Process> next;
    while (!next) {
      {
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, backoff, [&] { return stopping_; });
        if (stopping_) break;
      }
      Status restored;
      {
        std::lock_guard weights(weights_mu_);
        auto spawned = Spawn();
        if (spawned.ok()) {
          restored = Restore(**spawned);
          if (restored.ok()) {
            next = *spawned;
          } else {
            (*spawned)->Shutdown();
            kill((*spawned)->pid, SIGKILL);
            WaitForExit((*spawned)->pid);
          }
        } else {
          restored = spawned.status();
        }
      }
      if (!next) {
        {
          std::lock_guard lock(mu_);
          availability_ = Availability::kFailed;
          reason_ = "restarting the worker failed (" + restored.message() + ") after: " + death;
        }
        cv_.notify_all();
        NotifyListener();
        backoff = std::clamp(backoff * 2, std::chrono::milliseconds(kMinBackoff),
                             std::chrono::milliseconds(kMaxBackoff));
      }
    }
    bool stop = false;
    {
      std::lock_guard lock(mu_);
      if (next) {
        process_ = next;
        ++restarts_;
        availability_ = Availability::kServing;
        reason_.clear();
      }
      stop = stopping_;
      if (stop && !next) {
        supervisor_done_ = true;
        cv_.notify_all();
        return;
      }
    }
    cv_.notify_all();
    if (stop) {
      next->Shutdown();  // the destructor may have missed it; the worker exits on EOF
    } else {
      NotifyListener();
    }
    process = std::move(next);
    started = SteadyClock::now();
  }
}

StatusOr<std::shared_ptr<WorkerReplica::Process>> WorkerReplica::AwaitServing(Deadline deadline) {
  std::unique_lock lock(mu_);
  while (true) {
    if (stopping_) return Unavailable("model '" + options_.model_name + "' is unloading");
    if (process_ && availability_ == Availability::kServing) return process_;
    if (availability_ == Availability::kFailed) {
      return Unavailable("model '" + options_.model_name + "' is not serving: " + reason_);
    }
    if (deadline == kNoDeadline) {
      cv_.wait(lock);
    } else if (cv_.wait_until(lock, deadline) == std::cv_status::timeout &&
               !(process_ && availability_ == Availability::kServing)) {
      return DeadlineExceeded("model '" + options_.model_name +
                              "' is restarting its worker process (" + reason_ +
                              ") and was not back before the deadline");
    }
  }
}

StatusOr<std::pair<std::unique_lock<std::mutex>, std::shared_ptr<WorkerReplica::Process>>>
WorkerReplica::LockWeights() {
  while (true) {
    PT2_ASSIGN_OR_RETURN(auto process, AwaitServing(kNoDeadline));
    std::unique_lock weights(weights_mu_);
    {
      std::lock_guard lock(mu_);
      if (process_ == process) return std::make_pair(std::move(weights), std::move(process));
    }
  }
}

Status WorkerReplica::Died(Process& process, const std::string& during) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, kDeathReportWait, [&] { return process.dead; });
  const std::string why = process.dead ? process.death : "the worker process stopped answering";
  return Internal("model '" + options_.model_name + "': " + why + " (while " + during +
                  "); the worker is being restarted");
}

Status WorkerReplica::Run(size_t slot, const std::vector<const Tensor*>& inputs,
                          const std::vector<int>& output_indices, std::vector<Tensor>& outputs,
                          Deadline deadline) {
  std::shared_ptr<Process> process;
  StatusOr<WorkerMessage> reply = Internal("not sent");
  for (int attempt = 0;; ++attempt) {
    PT2_ASSIGN_OR_RETURN(process, AwaitServing(deadline));
    Process::Arena& arena = process->arenas.at(slot);
    std::vector<int> fds;
    const size_t need = wp::PackedSize(inputs);
    if (!arena.in || arena.in.size() < need) {
      PT2_ASSIGN_OR_RETURN(arena.in, SharedMemory::Create(std::max(need, 2 * arena.in.size()),
                                                          "pt2serve-inputs"));
      fds.push_back(arena.in.fd());
    }
    json request = {{"inputs", wp::PackTensors(inputs, arena.in.data())},
                    {"outputs", output_indices},
                    {"in_size", arena.in.size()}};
    const WorkerChannel& channel = process->runs.at(slot);
    if (!channel.Send(request, fds).ok()) {
      // The worker was gone before the request reached it: nothing of it
      // ran, so it may go to the next worker once.
      if (attempt == 0) {
        (void)Died(*process, "sending a request");
        continue;
      }
      return Died(*process, "sending this request");
    }
    if (deadline != kNoDeadline && !channel.WaitReadable(deadline + kHungGrace)) {
      // Hung: without this the runner slot, and with it the model, would stay
      // blocked for good (and hold up unloads and shutdown). The supervisor
      // restarts the worker with the same weights; other requests inside it
      // fail like in a crash.
      process->killed_as_hung = true;
      kill(process->pid, SIGKILL);
      (void)channel.Receive();  // end-of-stream once it is dead
      return DeadlineExceeded(
          "model '" + options_.model_name + "': no answer from its worker process (pid " +
          std::to_string(process->pid) + ") " + std::to_string(kHungGrace.count()) +
          " s after the request's deadline; the worker was killed as hung and is being "
          "restarted");
    }
    reply = channel.Receive();
    if (!reply.ok()) return Died(*process, "running this request");
    break;
  }
  Process::Arena& arena = process->arenas.at(slot);
  try {
    Status status = wp::StatusFromJson(reply->body.at("status"));
    if (!status.ok()) return status;
    if (!reply->fds.empty()) {
      PT2_ASSIGN_OR_RETURN(arena.out, SharedMemory::Map(reply->TakeFd(0),
                                                        reply->body.at("out_size").get<size_t>(),
                                                        /*writable=*/false));
    }
    outputs.clear();
    for (const json& desc : reply->body.at("outputs")) {
      PT2_ASSIGN_OR_RETURN(Tensor view,
                           wp::TensorFromDesc(desc, arena.out.data(), arena.out.size(), nullptr));
      // The arena is reused by the slot's next request: copy out.
      outputs.push_back(Tensor::Copy(view.name, view.dtype, view.shape, view.data, view.nbytes));
    }
  } catch (const std::exception& e) {
    return Internal("model '" + options_.model_name + "': malformed reply from the worker: " +
                    e.what());
  }
  return Status::Ok();
}

Status WorkerReplica::Call(Process& process, const json& request, const std::vector<int>& fds) {
  const std::string op = request.value("op", std::string("?"));
  if (!process.control.Send(request, fds).ok()) return Died(process, "weight operation " + op);
  auto reply = process.control.Receive();
  if (!reply.ok()) return Died(process, "weight operation " + op);
  return wp::StatusFromJson(reply->body.value("status", json::object()));
}

Status WorkerReplica::SendWeights(Process& process, const SharedMemory& memory,
                                  const json& descs) {
  return Call(process, {{"op", "write_inactive"}, {"tensors", descs}, {"size", memory.size()}},
              {memory.fd()});
}

Status WorkerReplica::WriteInactive(const std::vector<Tensor>& tensors) {
  std::vector<const Tensor*> pointers;
  for (const Tensor& t : tensors) pointers.push_back(&t);
  PT2_ASSIGN_OR_RETURN(SharedMemory copy,
                       SharedMemory::Create(wp::PackedSize(pointers), "pt2serve-weights"));
  auto descs = std::make_shared<json>(wp::PackTensors(pointers, copy.data()));
  auto memory = std::make_shared<SharedMemory>(std::move(copy));
  PT2_ASSIGN_OR_RETURN(auto locked, LockWeights());
  Status status = SendWeights(*locked.second, *memory, *descs);
  WeightCopy& inactive = sides_[1 - active_side_];
  if (status.ok()) {
    inactive = {memory, descs};
    inactive_ = InactiveContent::kWritten;
  } else {
    inactive = {};  // partly written: the caller frees it
    inactive_ = InactiveContent::kFreed;
  }
  return status;
}

Status WorkerReplica::FoldConstants(bool inactive) {
  PT2_ASSIGN_OR_RETURN(auto locked, LockWeights());
  return Call(*locked.second, {{"op", "fold"}, {"inactive", inactive}});
}

Status WorkerReplica::SwapBuffers() {
  PT2_ASSIGN_OR_RETURN(auto locked, LockWeights());
  PT2_RETURN_IF_ERROR(Call(*locked.second, {{"op", "swap"}}));
  active_side_ = 1 - active_side_;
  return Status::Ok();
}

Status WorkerReplica::FreeInactive() {
  PT2_ASSIGN_OR_RETURN(auto locked, LockWeights());
  PT2_RETURN_IF_ERROR(Call(*locked.second, {{"op", "free_inactive"}}));
  sides_[1 - active_side_] = {};
  inactive_ = InactiveContent::kFreed;
  return Status::Ok();
}

Status WorkerReplica::Restore(Process& process) {
  const WeightCopy& active = sides_[active_side_];
  const WeightCopy& inactive = sides_[1 - active_side_];
  // A fresh worker holds the compiled-in set as ACTIVE and nothing else.
  if (active.memory) {
    PT2_RETURN_IF_ERROR(SendWeights(process, *active.memory, *active.descs));
    PT2_RETURN_IF_ERROR(Call(process, {{"op", "fold"}, {"inactive", true}}));
    PT2_RETURN_IF_ERROR(Call(process, {{"op", "swap"}}));
    // Now the compiled-in set is INACTIVE.
  }
  if (inactive_ == InactiveContent::kWritten && inactive.memory) {
    PT2_RETURN_IF_ERROR(SendWeights(process, *inactive.memory, *inactive.descs));
    PT2_RETURN_IF_ERROR(Call(process, {{"op", "fold"}, {"inactive", true}}));
  } else if (inactive_ == InactiveContent::kFreed) {
    // Same state as the old worker: freed, to be refolded before a write.
    PT2_RETURN_IF_ERROR(Call(process, {{"op", "free_inactive"}}));
  }
  return Status::Ok();
}

}  // namespace pt2serve
