#include "runtime/model_package.h"

#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "devices/cpu_isa.h"
#include "devices/tensor_convert.h"
#include "package/package_description.h"
#include "runtime/output_probe.h"

namespace pt2serve {
namespace {

// Loader construction is not thread-safe (a static JSON parse buffer inside
// AOTIModelPackageLoader), so every construction in the process takes this.
std::mutex& LoaderMutex() {
  static std::mutex mu;
  return mu;
}

std::string What(const std::exception& e) {
  if (const auto* c10e = dynamic_cast<const c10::Error*>(&e)) {
    return c10e->what_without_backtrace();
  }
  return e.what();
}

Status CheckIsZip(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return NotFound("package file not found: " + path);
  }
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  if (!in.read(magic, sizeof(magic)) || magic[0] != 'P' || magic[1] != 'K' ||
      magic[2] != 3 || magic[3] != 4) {
    return InvalidArgument("not a .pt2 package (not a zip archive): " + path);
  }
  return Status::Ok();
}


// AOTInductor pads each blob entry to this (AOTI_CONST_ALIGNMENT, model_base.h).
constexpr size_t kConstAlignment = 64;

// Fills info.blob_nbytes / folded_nbytes from the package's constant table
// (the container's own table, as the wrapper source sets it). Without one
// (not parseable), the updatable constants are all that is known.
void AccountConstantMemory(const std::vector<WrapperConstant>* constants, PackageInfo& info) {
  info.blob_nbytes = 0;
  info.folded_nbytes = 0;
  if (constants) {
    for (const WrapperConstant& c : *constants) {
      uint64_t nbytes = c.nbytes;
      if (nbytes == 0 && c.dtype) {  // folded results may carry no data size
        auto computed = ByteSize(c.shape, *c.dtype);
        if (computed.ok()) nbytes = *computed;
      }
      if (c.from_folded || c.type == "FoldedConstant") {
        info.folded_nbytes += nbytes;
      } else {
        info.blob_nbytes += (nbytes + kConstAlignment - 1) / kConstAlignment * kConstAlignment;
      }
    }
  }
  info.blob_nbytes = std::max(info.blob_nbytes, info.constants_nbytes);
}

}  // namespace

ModelPackage::~ModelPackage() = default;

torch::inductor::AOTIModelContainerRunner* ModelPackage::runner() const {
  return loader_->get_runner();
}

StatusOr<std::unique_ptr<ModelPackage>> ModelPackage::Load(const Options& options) {
  PT2_RETURN_IF_ERROR(CheckIsZip(options.path));
  std::unique_ptr<ModelPackage> pkg(new ModelPackage);
  PackageInfo& info = pkg->info_;
  info.path = options.path;

  std::unordered_map<std::string, std::string> metadata;
  try {
    std::lock_guard lock(LoaderMutex());
    metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(
        options.path, "model");
  } catch (const std::exception& e) {
    return InvalidArgument("corrupt or unsupported .pt2 package " + options.path + ": " +
                           What(e));
  }
  info.metadata.insert(metadata.begin(), metadata.end());
  auto key = info.metadata.find("AOTI_DEVICE_KEY");
  if (key == info.metadata.end()) {
    return InvalidArgument("package " + options.path + " has no AOTI_DEVICE_KEY metadata");
  }
  info.device_key = key->second;
  auto meta = [&](const char* name) {
    auto it = info.metadata.find(name);
    return it == info.metadata.end() ? std::string() : it->second;
  };
  PT2_RETURN_IF_ERROR(
      CheckCpuCanRun(meta("AOTI_PLATFORM"), meta("AOTI_MACHINE"), meta("AOTI_CPU_ISA"))
          .WithPrefix("package " + options.path));
  PT2_ASSIGN_OR_RETURN(info.device, ResolveDevice(options.device, info.device_key));
  PT2_RETURN_IF_ERROR(CheckHostSupports(info.device));
  // The signature: pt2serve metadata, else derived from the package's
  // wrapper source, or declared by the config (package/package_description.h).
  PT2_ASSIGN_OR_RETURN(PackageDescription desc,
                       DescribePackage(options.path, options.declared_signature
                                                         ? &*options.declared_signature
                                                         : nullptr));
  info.signature = desc.signature;
  info.signature_source = SignatureSourceName(desc.source);
  if (desc.wrapper) info.runtime_constant_folding = desc.wrapper->runtime_constant_folding;

  {
    std::lock_guard lock(LoaderMutex());
    ExtractionLoadGuard extraction;
    try {
      pkg->loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          options.path, "model", /*run_single_threaded=*/false,
          std::max<size_t>(options.num_runners, 1),
          static_cast<c10::DeviceIndex>(info.device.index));
      // Claims the directory the package was just extracted into, so that it
      // is removed if this process dies before the loader can.
      pkg->extraction_claim_ = extraction.Claim();
    } catch (const std::exception& e) {
      // The loader throws after extracting (e.g. a library that does not
      // load) without removing what it extracted (extraction_dirs.h).
      extraction.RemoveLeftovers();
      return InvalidArgument("failed to load package " + options.path + ": " + What(e));
    }
  }

  try {
    const auto constants = pkg->runner()->extract_constants_map(/*use_inactive=*/false);
    for (const auto& fqn : pkg->loader_->get_constant_fqns()) {
      auto it = constants.find(fqn);
      if (it == constants.end()) continue;  // folded away; not updatable
      ConstantInfo c;
      c.fqn = fqn;
      auto dtype = FromScalarType(it->second.scalar_type());
      if (!dtype) {
        return InvalidArgument("constant '" + fqn + "' has an unsupported dtype");
      }
      c.dtype = *dtype;
      c.shape.assign(it->second.sizes().begin(), it->second.sizes().end());
      c.nbytes = it->second.nbytes();
      info.constants_nbytes += c.nbytes;
      info.constants.push_back(std::move(c));
    }
  } catch (const std::exception& e) {
    return Internal("reading constants of " + options.path + ": " + What(e));
  }
  // Packages compiled with runtime constant folding list their folded
  // constants among the FQNs; fold them now, on the package's device, instead
  // of letting the first request do it: the container's in-run fold holds its
  // exclusive lock (stalling every caller) and does not give its model
  // instance back if it throws, which would hang a runner for good.
  bool runtime_folding = false;
  try {
    for (const auto& fqn : pkg->loader_->get_constant_fqns()) {
      runtime_folding = runtime_folding || fqn.starts_with("_FOLDED_CONST");
    }
    if (runtime_folding) {
      c10::DeviceGuard on_device(ToC10Device(info.device));
      pkg->runner()->run_const_fold(/*use_inactive=*/false);
    }
  } catch (const std::exception& e) {
    return InvalidArgument("constant folding of package " + options.path + " failed: " + What(e));
  }
  std::sort(info.constants.begin(), info.constants.end(),
            [](const ConstantInfo& a, const ConstantInfo& b) { return a.fqn < b.fqn; });
  if (desc.wrapper) {
    for (const WrapperConstant& c : desc.wrapper->constants) {
      const bool updatable = std::any_of(info.constants.begin(), info.constants.end(),
                                         [&](const ConstantInfo& u) { return u.fqn == c.fqn; });
      if (!updatable) info.folded_constants.push_back(c.fqn.empty() ? c.name : c.fqn);
    }
  }
  AccountConstantMemory(desc.wrapper ? &desc.wrapper->constants : nullptr, info);
  if (!desc.outputs_known) {
    // No pt2serve metadata (derived or declared signature): learn the outputs'
    // dtypes and shapes by running the model once or twice (output_probe.h).
    Signature probed = info.signature;
    c10::DeviceGuard on_device(ToC10Device(info.device));
    Status probe = ProbeOutputs(
        info.device, [&](const std::vector<at::Tensor>& in) { return pkg->Run(in); }, &probed);
    if (!probe.ok() && desc.source != SignatureSource::kDeclared) {
      return probe.WithPrefix("package " + options.path +
                              " (declare its outputs in the model config to skip this)");
    }
    // A model that cannot run on zero inputs keeps its declared outputs unchecked.
    if (probe.ok() && desc.source == SignatureSource::kDeclared) {
      PT2_RETURN_IF_ERROR(
          CheckDeclaredOutputs(info.signature, probed).WithPrefix("package " + options.path));
    } else if (probe.ok()) {
      info.signature = std::move(probed);
    }
  }
  return pkg;
}

StatusOr<std::vector<at::Tensor>> ModelPackage::Run(const std::vector<at::Tensor>& inputs,
                                                    void* stream_handle) {
  try {
    return loader_->run(inputs, stream_handle);
  } catch (const std::exception& e) {
    return Internal("model run failed: " + What(e));
  }
}

}  // namespace pt2serve
