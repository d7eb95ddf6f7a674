// The messages between the daemon (WorkerReplica) and pt2serve-worker.
//
// Descriptors the worker inherits (see WorkerReplica::Spawn):
//   3          control channel: hello, then one weight operation at a time
//   4          fatal report: the worker writes one message before it dies
//   5..5+N-1   one run channel per runner slot
//
// Control channel (daemon -> worker request, worker -> daemon reply):
//   worker:  {"op":"hello","status":S,"info":PackageInfo}   once, after loading
//   daemon:  {"op":"write_inactive","tensors":[Desc...]} + fd of the weight file
//            {"op":"fold","inactive":bool} | {"op":"swap"} | {"op":"free_inactive"}
//   worker:  {"status":S}
// Run channel i:
//   daemon:  {"inputs":[Desc...],"outputs":[index...],"in_size":n} (+ fd of a
//            new input arena when it grew)
//   worker:  {"status":S,"outputs":[Desc...],"out_size":n} (+ fd of a new
//            output arena when it grew)
// Fatal report: {"message":"..."} then the worker exits.
// Desc = {"name","dtype","shape","offset","nbytes"} into the arena or file.
// S = {"code":int,"message":str}.
#pragma once

#include <nlohmann/json.hpp>

#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "runtime/package_info.h"

namespace pt2serve::worker_protocol {

inline constexpr int kControlFd = 3;
inline constexpr int kFatalFd = 4;
inline constexpr int kFirstRunFd = 5;

nlohmann::json StatusToJson(const Status& status);
Status StatusFromJson(const nlohmann::json& j);

nlohmann::json PackageInfoToJson(const PackageInfo& info);
StatusOr<PackageInfo> PackageInfoFromJson(const nlohmann::json& j);

// Tensor descriptor at `offset` of an arena.
nlohmann::json DescToJson(const Tensor& t, size_t offset);
// A tensor aliasing [base + offset, +nbytes) of an arena of `arena_size`
// bytes, kept alive by `owner`; INTERNAL when it does not fit.
StatusOr<Tensor> TensorFromDesc(const nlohmann::json& desc, const std::byte* base,
                                size_t arena_size, std::shared_ptr<const void> owner);

// Bytes an arena needs for `tensors` packed at 64-byte alignment.
size_t PackedSize(const std::vector<const Tensor*>& tensors);
// Copies `tensors` into `base` (PackedSize bytes) and returns their descriptors.
nlohmann::json PackTensors(const std::vector<const Tensor*>& tensors, std::byte* base);

}  // namespace pt2serve::worker_protocol
