#include "package/package_description.h"

#include "package/package_signature.h"

namespace pt2serve {

std::string_view SignatureSourceName(SignatureSource source) {
  switch (source) {
    case SignatureSource::kMetadata: return "pt2serve metadata";
    case SignatureSource::kDerived: return "derived from the package";
    case SignatureSource::kDeclared: return "declared in the model config";
  }
  return "unknown";
}

StatusOr<PackageDescription> DescribePackage(const std::string& path, const Signature* declared) {
  PackageDescription desc;
  PT2_ASSIGN_OR_RETURN(desc.files, ReadPackageFiles(path));
  if (!desc.files.wrapper_source.empty()) {
    auto facts = ParseWrapperSource(desc.files.wrapper_source);
    if (facts.ok()) {
      desc.wrapper = std::move(*facts);
    } else {
      desc.notes.push_back("wrapper source not understood: " + facts.status().message());
    }
  }
  std::optional<DerivedSignature> derived;
  auto meta = desc.files.metadata.find(kSignatureMetadataKey);
  if (meta != desc.files.metadata.end()) {
    DerivedSignature d;
    auto parsed = Signature::FromJson(meta->second);
    if (!parsed.ok()) return parsed.status().WithPrefix("package " + path + ": " + meta->first);
    d.signature = std::move(*parsed);
    d.outputs_known = true;
    derived = std::move(d);
  } else if (desc.wrapper) {
    auto d = DeriveSignature(*desc.wrapper);
    if (!d.ok()) {
      if (!declared) return d.status().WithPrefix("package " + path);
      desc.notes.push_back("signature not derivable: " + d.status().message());
    } else {
      derived = std::move(*d);
    }
  } else if (!declared) {
    return InvalidArgument("package " + path +
                           " has neither pt2serve metadata nor a wrapper source to derive its "
                           "signature from; declare inputs and outputs in the model config");
  }
  if (declared) {
    if (derived) {
      auto reconciled = ReconcileDeclared(*declared, *derived);
      if (!reconciled.ok()) return reconciled.status().WithPrefix("package " + path);
      desc.signature = std::move(*reconciled);
      desc.outputs_known = derived->outputs_known;
      if (derived->outputs_known) {
        PT2_RETURN_IF_ERROR(
            CheckDeclaredOutputs(*declared, derived->signature).WithPrefix("package " + path));
      }
    } else {
      desc.signature = *declared;
      desc.outputs_known = false;
    }
    desc.source = SignatureSource::kDeclared;
  } else {
    desc.signature = derived->signature;
    desc.outputs_known = derived->outputs_known;
    desc.notes.insert(desc.notes.end(), derived->notes.begin(), derived->notes.end());
    desc.source = meta != desc.files.metadata.end() ? SignatureSource::kMetadata
                                                    : SignatureSource::kDerived;
  }
  return desc;
}

Status CheckDeclaredOutputs(const Signature& declared, const Signature& probed) {
  if (declared.outputs.size() != probed.outputs.size()) {
    return InvalidArgument("declared signature has " + std::to_string(declared.outputs.size()) +
                           " outputs, the package returns " +
                           std::to_string(probed.outputs.size()));
  }
  for (size_t i = 0; i < declared.outputs.size(); ++i) {
    const TensorSpec& d = declared.outputs[i];
    const TensorSpec& p = probed.outputs[i];
    const std::string who = "declared output " + std::to_string(i) + " '" + d.name + "'";
    if (d.dtype != p.dtype) {
      return InvalidArgument(who + " has dtype " + std::string(DTypeName(d.dtype)) +
                             ", the package returns " + std::string(DTypeName(p.dtype)));
    }
    if (d.shape.size() != p.shape.size()) {
      return InvalidArgument(who + " has shape " + ShapeToString(d.shape) +
                             ", the package returns " + ShapeToString(p.shape));
    }
    for (size_t k = 0; k < d.shape.size(); ++k) {
      if (d.shape[k] >= 0 && p.shape[k] >= 0 && d.shape[k] != p.shape[k]) {
        return InvalidArgument(who + " has shape " + ShapeToString(d.shape) +
                               ", the package returns " + ShapeToString(p.shape));
      }
    }
  }
  return Status::Ok();
}

}  // namespace pt2serve
