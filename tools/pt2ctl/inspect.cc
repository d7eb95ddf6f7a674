#include "tools/pt2ctl/inspect.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "tools/pt2ctl/table.h"

namespace pt2serve::ctl {
namespace {

using nlohmann::json;

std::string Meta(const PackageDescription& d, const std::string& key) {
  auto it = d.files.metadata.find(key);
  return it == d.files.metadata.end() || it->second.empty() ? "-" : it->second;
}

std::string Range(const DimRange& r) {
  return std::to_string(r.min) + ".." +
         (r.max == DimRange::kUnbounded ? std::string("inf") : std::to_string(r.max));
}

// "[-1, -1]" plus "dim 0: 1..64 (s31); dim 1: 1..32 (s27)" for dynamic dims.
std::string Dims(const TensorSpec& s) {
  std::string out;
  for (size_t i = 0; i < s.shape.size() && i < s.dims.size(); ++i) {
    if (s.shape[i] >= 0) continue;
    if (!out.empty()) out += "; ";
    out += "dim " + std::to_string(i) + ": " + Range(s.dims[i]);
    if (!s.dims[i].symbol.empty()) out += " (" + s.dims[i].symbol + ")";
  }
  return out;
}

// Updatable = a parameter or buffer with an FQN, not a folding result.
bool Updatable(const WrapperConstant& c) {
  return !c.from_folded && !c.fqn.empty() && (c.type == "Parameter" || c.type == "Buffer");
}

std::string Human(uint64_t bytes) {
  std::ostringstream o;
  if (bytes < 1024) {
    o << bytes << " B";
  } else if (bytes < (1u << 20)) {
    o << (bytes / 1024.0) << " KiB";
  } else {
    o << (bytes / 1048576.0) << " MiB";
  }
  return o.str();
}

json SpecJson(const TensorSpec& s, bool with_dtype) {
  json j = {{"name", s.name}, {"shape", s.shape}};
  if (with_dtype) j["dtype"] = std::string(DTypeName(s.dtype));
  if (!s.dims.empty()) {
    j["dims"] = json::array();
    for (const DimRange& r : s.dims) {
      json d = {{"min", r.min}};
      d["max"] = r.max == DimRange::kUnbounded ? json(nullptr) : json(r.max);
      if (!r.symbol.empty()) d["symbol"] = r.symbol;
      j["dims"].push_back(d);
    }
  }
  return j;
}

}  // namespace

std::string InspectText(const PackageDescription& d) {
  std::ostringstream o;
  o << "package    " << d.files.path << "\n";
  o << "device     " << Meta(d, "AOTI_DEVICE_KEY") << "\n";
  o << "platform   " << Meta(d, "AOTI_PLATFORM") << " " << Meta(d, "AOTI_MACHINE")
    << ", CPU ISA " << Meta(d, "AOTI_CPU_ISA") << ", compute capability "
    << Meta(d, "AOTI_COMPUTE_CAPABILITY") << "\n";
  o << "signature  " << SignatureSourceName(d.source);
  if (d.signature.max_batch_size > 0) o << ", max_batch_size " << d.signature.max_batch_size;
  o << "\n\n";
  Table in({"INPUT", "DTYPE", "SHAPE", "DYNAMIC DIMS"});
  for (const TensorSpec& s : d.signature.inputs) {
    in.AddRow({s.name, std::string(DTypeName(s.dtype)), ShapeToString(s.shape), Dims(s)});
  }
  o << in.ToString() << "\n";
  Table out({"OUTPUT", "DTYPE", "SHAPE"});
  for (const TensorSpec& s : d.signature.outputs) {
    if (d.outputs_known) {
      out.AddRow({s.name, std::string(DTypeName(s.dtype)), ShapeToString(s.shape)});
    } else {
      out.AddRow({s.name, "(at load)", "(at load)"});
    }
  }
  o << out.ToString();
  if (!d.outputs_known) {
    o << "(output dtypes and shapes are not recorded in the package; the server learns them "
         "by running the model once at load)\n";
  }
  if (d.wrapper) {
    o << "\n";
    uint64_t total = 0, updatable = 0;
    Table c({"CONSTANT", "DTYPE", "SHAPE", "BYTES", "UPDATABLE"});
    for (const WrapperConstant& k : d.wrapper->constants) {
      total += k.nbytes;
      if (Updatable(k)) updatable += k.nbytes;
      c.AddRow({k.fqn.empty() ? k.name : k.fqn,
                k.dtype ? std::string(DTypeName(*k.dtype)) : "?", ShapeToString(k.shape),
                std::to_string(k.nbytes), Updatable(k) ? "yes" : "no (" + k.type + ")"});
    }
    o << c.ToString();
    o << "constants: " << d.wrapper->constants.size() << ", " << Human(total) << " ("
      << Human(updatable) << " updatable)\n";
    if (!d.wrapper->runtime_constant_folding) {
      o << "compiled without aot_inductor.use_runtime_constant_folding: parameters that "
           "inductor folded at compile time are not listed and cannot be updated\n";
    }
  }
  for (const std::string& note : d.notes) o << "note: " << note << "\n";
  return o.str();
}

std::string InspectJson(const PackageDescription& d) {
  json j;
  j["package"] = d.files.path;
  j["metadata"] = d.files.metadata;
  j["device"] = Meta(d, "AOTI_DEVICE_KEY");
  j["signature_source"] = std::string(SignatureSourceName(d.source));
  j["max_batch_size"] = d.signature.max_batch_size;
  j["inputs"] = json::array();
  for (const TensorSpec& s : d.signature.inputs) j["inputs"].push_back(SpecJson(s, true));
  j["outputs"] = json::array();
  for (const TensorSpec& s : d.signature.outputs) {
    j["outputs"].push_back(SpecJson(s, d.outputs_known));
  }
  j["outputs_known"] = d.outputs_known;
  if (d.wrapper) {
    j["runtime_constant_folding"] = d.wrapper->runtime_constant_folding;
    j["constants"] = json::array();
    for (const WrapperConstant& k : d.wrapper->constants) {
      j["constants"].push_back({{"name", k.fqn.empty() ? k.name : k.fqn},
                                {"internal_name", k.name},
                                {"dtype", k.dtype ? std::string(DTypeName(*k.dtype)) : ""},
                                {"shape", k.shape},
                                {"bytes", k.nbytes},
                                {"type", k.type},
                                {"updatable", Updatable(k)}});
    }
  }
  j["notes"] = d.notes;
  return j.dump();
}

}  // namespace pt2serve::ctl
