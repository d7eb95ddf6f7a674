// Everything pt2serve reads from a .pt2 before loading its native code:
// metadata, the signature (from pt2serve metadata, derived, or declared by
// the config and checked against the package), and the constants table.
// What `pt2ctl models inspect` prints and ModelPackage::Load starts from.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"
#include "package/package_archive.h"
#include "package/wrapper_source.h"

namespace pt2serve {

// Metadata key the pt2serve exporter embeds the signature JSON under.
inline constexpr char kSignatureMetadataKey[] = "pt2serve.signature";

enum class SignatureSource {
  kMetadata,  // the pt2serve exporter's "pt2serve.signature" metadata
  kDerived,   // derived from the wrapper source (plain aoti_compile_and_package)
  kDeclared,  // declared in the model config, checked against the package
};
std::string_view SignatureSourceName(SignatureSource source);

struct PackageDescription {
  PackageFiles files;
  std::optional<WrapperFacts> wrapper;  // absent when the package ships no wrapper source
  Signature signature;
  SignatureSource source = SignatureSource::kMetadata;
  // False when output dtypes/shapes are still unknown (derived signatures):
  // ModelPackage::Load learns them by running the model once.
  bool outputs_known = true;
  std::vector<std::string> notes;
};

// Reads the package at `path`. With `declared`, that signature is used
// after checking it against what the package records (any contradiction is
// INVALID_ARGUMENT naming it). Without it: pt2serve metadata if present,
// else derived from the wrapper source.
StatusOr<PackageDescription> DescribePackage(const std::string& path,
                                             const Signature* declared = nullptr);

// Checks a signature whose outputs were learned by running the model
// (`probed`) against the declared outputs: dtypes equal, ranks equal, static
// dims equal. The declared names are kept.
Status CheckDeclaredOutputs(const Signature& declared, const Signature& probed);

}  // namespace pt2serve
