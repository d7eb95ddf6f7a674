#include "runtime/worker_protocol.h"

#include <cstring>

namespace pt2serve::worker_protocol {
namespace {

constexpr size_t kAlign = 64;
size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

nlohmann::json StatusToJson(const Status& status) {
  return {{"code", static_cast<int>(status.code())}, {"message", status.message()}};
}

Status StatusFromJson(const nlohmann::json& j) {
  const int code = j.value("code", static_cast<int>(StatusCode::kInternal));
  if (code == 0) return Status::Ok();
  if (code < 0 || code > static_cast<int>(StatusCode::kUnauthenticated)) {
    return Internal("worker sent an unknown status code " + std::to_string(code));
  }
  return Status(static_cast<StatusCode>(code), j.value("message", std::string()));
}

nlohmann::json PackageInfoToJson(const PackageInfo& info) {
  nlohmann::json constants = nlohmann::json::array();
  for (const ConstantInfo& c : info.constants) {
    constants.push_back({{"fqn", c.fqn},
                         {"dtype", std::string(DTypeName(c.dtype))},
                         {"shape", c.shape},
                         {"nbytes", c.nbytes}});
  }
  return {{"path", info.path},
          {"device_key", info.device_key},
          {"device", info.device.ToString()},
          {"signature", info.signature.ToJson()},
          {"signature_source", info.signature_source},
          {"runtime_constant_folding", info.runtime_constant_folding},
          {"folded_constants", info.folded_constants},
          {"metadata", info.metadata},
          {"constants", constants},
          {"constants_nbytes", info.constants_nbytes},
          {"blob_nbytes", info.blob_nbytes},
          {"folded_nbytes", info.folded_nbytes}};
}

StatusOr<PackageInfo> PackageInfoFromJson(const nlohmann::json& j) {
  try {
    PackageInfo info;
    info.path = j.at("path").get<std::string>();
    info.device_key = j.at("device_key").get<std::string>();
    PT2_ASSIGN_OR_RETURN(info.device, DeviceSpec::Parse(j.at("device").get<std::string>()));
    PT2_ASSIGN_OR_RETURN(info.signature,
                         Signature::FromJson(j.at("signature").get<std::string>()));
    info.signature_source = j.at("signature_source").get<std::string>();
    info.runtime_constant_folding = j.at("runtime_constant_folding").get<bool>();
    info.folded_constants = j.at("folded_constants").get<std::vector<std::string>>();
    info.metadata = j.at("metadata").get<std::map<std::string, std::string>>();
    for (const auto& c : j.at("constants")) {
      ConstantInfo ci;
      ci.fqn = c.at("fqn").get<std::string>();
      auto dtype = DTypeFromName(c.at("dtype").get<std::string>());
      if (!dtype) return Internal("worker sent an unknown dtype for constant " + ci.fqn);
      ci.dtype = *dtype;
      ci.shape = c.at("shape").get<Shape>();
      ci.nbytes = c.at("nbytes").get<size_t>();
      info.constants.push_back(std::move(ci));
    }
    info.constants_nbytes = j.at("constants_nbytes").get<size_t>();
    info.blob_nbytes = j.at("blob_nbytes").get<size_t>();
    info.folded_nbytes = j.at("folded_nbytes").get<size_t>();
    return info;
  } catch (const std::exception& e) {
    return Internal(std::string("malformed package info from worker: ") + e.what());
  }
}

nlohmann::json DescToJson(const Tensor& t, size_t offset) {
  return {{"name", t.name},
          {"dtype", std::string(DTypeName(t.dtype))},
          {"shape", t.shape},
          {"offset", offset},
          {"nbytes", t.nbytes}};
}

StatusOr<Tensor> TensorFromDesc(const nlohmann::json& desc, const std::byte* base,
                                size_t arena_size, std::shared_ptr<const void> owner) {
  try {
    Tensor t;
    t.name = desc.at("name").get<std::string>();
    auto dtype = DTypeFromName(desc.at("dtype").get<std::string>());
    if (!dtype) return Internal("unknown dtype in tensor '" + t.name + "'");
    t.dtype = *dtype;
    t.shape = desc.at("shape").get<Shape>();
    const size_t offset = desc.at("offset").get<size_t>();
    t.nbytes = desc.at("nbytes").get<size_t>();
    PT2_ASSIGN_OR_RETURN(uint64_t expected, ByteSize(t.shape, t.dtype));
    if (expected != t.nbytes || offset > arena_size || t.nbytes > arena_size - offset) {
      return Internal("tensor '" + t.name + "' does not fit its shared memory");
    }
    t.data = base + offset;
    t.owner = std::move(owner);
    return t;
  } catch (const std::exception& e) {
    return Internal(std::string("malformed tensor descriptor: ") + e.what());
  }
}

size_t PackedSize(const std::vector<const Tensor*>& tensors) {
  size_t total = 0;
  for (const Tensor* t : tensors) total += AlignUp(t->nbytes);
  return total;
}

nlohmann::json PackTensors(const std::vector<const Tensor*>& tensors, std::byte* base) {
  nlohmann::json descs = nlohmann::json::array();
  size_t offset = 0;
  for (const Tensor* t : tensors) {
    if (t->nbytes) std::memcpy(base + offset, t->data, t->nbytes);
    descs.push_back(DescToJson(*t, offset));
    offset += AlignUp(t->nbytes);
  }
  return descs;
}

}  // namespace pt2serve::worker_protocol
