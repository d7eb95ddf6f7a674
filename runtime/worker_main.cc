// pt2serve-worker: runs one replica of one model for a pt2serve daemon that
// isolates the model in its own process (ModelConfig::isolation "process").
//
// Started only by WorkerReplica, with its channels on fixed descriptors (see
// worker_protocol.h). Loads the package as a LocalReplica, answers the
// daemon, and exits when the daemon closes the control channel or dies
// (PR_SET_PDEATHSIG). Its reason to exist is to die alone: when a kernel
// aborts the process, the terminate handler first writes the exception's
// message to the fatal channel so the daemon can tell the client and the
// operator what happened.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "devices/cpu_threads.h"
#include "runtime/local_replica.h"
#include "runtime/shared_memory.h"
#include "runtime/worker_channel.h"
#include "runtime/worker_protocol.h"

namespace pt2serve {
namespace {

namespace wp = worker_protocol;
using json = nlohmann::json;

struct Args {
  std::string model, package, device = "auto";
  size_t runners = 1;
  int cpu_threads = 0;
  pid_t parent = 0;
  std::optional<Signature> signature;  // declared in the model config
};

bool ParseArgs(int argc, char** argv, Args& args) {
  try {
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string key = argv[i], value = argv[i + 1];
      if (key == "--model") args.model = value;
      else if (key == "--package") args.package = value;
      else if (key == "--device") args.device = value;
      else if (key == "--runners") args.runners = std::stoul(value);
      else if (key == "--cpu-threads") args.cpu_threads = std::stoi(value);
      else if (key == "--parent") args.parent = static_cast<pid_t>(std::stol(value));
      else if (key == "--signature") {
        auto sig = Signature::FromJson(value);
        if (!sig.ok()) return false;
        args.signature = std::move(sig).value();
      }
      else return false;
    }
  } catch (const std::exception&) {
    return false;
  }
  return !args.package.empty() && args.runners > 0 && args.parent > 0;
}

std::atomic<bool> g_dying{false};

// Reports the exception that is terminating the process, then aborts. Runs
// on whichever thread the exception escaped from (often an OpenMP worker of
// a generated kernel); a second thread terminating at once waits for the
// first to finish the report.
[[noreturn]] void OnTerminate() {
  if (g_dying.exchange(true)) {
    while (true) pause();
  }
  std::string message = "std::terminate called without an active exception";
  if (std::exception_ptr current = std::current_exception()) {
    try {
      std::rethrow_exception(current);
    } catch (const c10::Error& e) {
      message = e.what_without_backtrace();
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
      message = "unknown exception";
    }
  }
  // The daemon reads at most this much; keep the report one message.
  if (message.size() > 4096) message.resize(4096);
  WorkerChannel fatal(wp::kFatalFd);
  (void)fatal.Send(json{{"message", message}});
  fatal.Release();
  std::abort();
}

[[noreturn]] void DieWith(const std::string& message) {
  g_dying.store(true);
  WorkerChannel fatal(wp::kFatalFd);
  (void)fatal.Send(json{{"message", message}});
  fatal.Release();
  _exit(3);
}

// Serves runner slot `slot` until the daemon closes its channel.
void RunLoop(LocalReplica& replica, size_t slot, int cpu_threads) {
  SetThisThreadCpuThreads(cpu_threads);
  WorkerChannel channel(wp::kFirstRunFd + static_cast<int>(slot));
  SharedMemory in, out;
  while (true) {
    auto message = channel.Receive();
    if (!message.ok()) break;
    json reply;
    std::vector<int> fds;
    auto serve = [&]() -> Status {
      const json& body = message->body;
      if (!message->fds.empty()) {
        PT2_ASSIGN_OR_RETURN(in, SharedMemory::Map(message->TakeFd(0),
                                                   body.at("in_size").get<size_t>(),
                                                   /*writable=*/false));
      }
      std::vector<Tensor> inputs;
      for (const json& desc : body.at("inputs")) {
        PT2_ASSIGN_OR_RETURN(Tensor t, wp::TensorFromDesc(desc, in.data(), in.size(), nullptr));
        inputs.push_back(std::move(t));
      }
      std::vector<const Tensor*> pointers;
      for (const Tensor& t : inputs) pointers.push_back(&t);
      const auto indices = body.at("outputs").get<std::vector<int>>();
      std::vector<Tensor> outputs;
      PT2_RETURN_IF_ERROR(replica.Run(slot, pointers, indices, outputs, kNoDeadline));
      std::vector<const Tensor*> results;
      for (const Tensor& t : outputs) results.push_back(&t);
      const size_t need = wp::PackedSize(results);
      if (!out || out.size() < need) {
        PT2_ASSIGN_OR_RETURN(out, SharedMemory::Create(std::max(need, 2 * out.size()),
                                                       "pt2serve-outputs"));
        fds.push_back(out.fd());
      }
      reply["outputs"] = wp::PackTensors(results, out.data());
      reply["out_size"] = out.size();
      return Status::Ok();
    };
    Status status;
    try {
      status = serve();
    } catch (const std::exception& e) {
      status = Internal(std::string("worker: ") + e.what());
    }
    if (!status.ok()) fds.clear();
    reply["status"] = wp::StatusToJson(status);
    if (replica.availability() == Availability::kFailed) {
      DieWith(replica.availability_reason());  // a poisoned device: start afresh
    }
    if (!channel.Send(reply, fds).ok()) break;
  }
}

Status HandleControl(LocalReplica& replica, WorkerMessage& message) {
  const json& body = message.body;
  const std::string op = body.value("op", "");
  if (op == "write_inactive") {
    if (message.fds.empty()) return Internal("write_inactive without its weights");
    PT2_ASSIGN_OR_RETURN(SharedMemory weights,
                         SharedMemory::Map(message.TakeFd(0), body.at("size").get<size_t>(),
                                           /*writable=*/false));
    std::vector<Tensor> tensors;
    for (const json& desc : body.at("tensors")) {
      PT2_ASSIGN_OR_RETURN(Tensor t,
                           wp::TensorFromDesc(desc, weights.data(), weights.size(), nullptr));
      tensors.push_back(std::move(t));
    }
    return replica.WriteInactive(tensors);  // copies; the mapping may go afterwards
  }
  if (op == "fold") return replica.FoldConstants(body.at("inactive").get<bool>());
  if (op == "swap") return replica.SwapBuffers();
  if (op == "free_inactive") return replica.FreeInactive();
  return Internal("worker: unknown operation '" + op + "'");
}

int Main(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, args)) {
    std::cerr << "pt2serve-worker is started by pt2serve for models with isolation: process;"
                 " it is not meant to be run by hand\n";
    return 2;
  }
  // Die with the daemon, also when it is killed.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != args.parent) return 1;
  std::set_terminate(OnTerminate);

  WorkerChannel control(wp::kControlFd);
  ModelPackage::Options options;
  options.path = args.package;
  options.device = args.device;
  options.num_runners = args.runners;
  options.declared_signature = args.signature;
  auto loaded = LocalReplica::Load(options);
  if (!loaded.ok()) {
    (void)control.Send(json{{"op", "hello"}, {"status", wp::StatusToJson(loaded.status())}});
    return 1;
  }
  std::unique_ptr<LocalReplica> replica = std::move(loaded).value();
  if (!control.Send(json{{"op", "hello"},
                         {"status", wp::StatusToJson(Status::Ok())},
                         {"info", wp::PackageInfoToJson(replica->info())}})
           .ok()) {
    return 1;
  }
  std::vector<std::thread> runners;
  for (size_t slot = 0; slot < args.runners; ++slot) {
    runners.emplace_back(RunLoop, std::ref(*replica), slot, args.cpu_threads);
  }
  // Weight operations, one at a time, until the daemon closes the channel.
  while (true) {
    auto message = control.Receive();
    if (!message.ok()) break;
    Status status;
    try {
      status = HandleControl(*replica, *message);
    } catch (const std::exception& e) {
      status = Internal(std::string("worker: ") + e.what());
    }
    if (replica->availability() == Availability::kFailed) DieWith(replica->availability_reason());
    if (!control.Send(json{{"status", wp::StatusToJson(status)}}).ok()) break;
  }
  // The daemon is done with us: leave without unwinding the container
  // under running threads (a runner may still be inside a kernel).
  std::fflush(nullptr);
  _exit(0);
}

}  // namespace
}  // namespace pt2serve

int main(int argc, char** argv) { return pt2serve::Main(argc, argv); }
