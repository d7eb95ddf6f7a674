// Reading a .pt2 package's files without loading its native code.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"

namespace pt2serve {

// What an AOTInductor package holds for one model, read from the zip.
struct PackageFiles {
  std::string path;
  // `<archive>/data/aotinductor/<model>/<hash>.wrapper.cpp`; empty if the
  // package ships no wrapper source (then no signature can be derived).
  std::string wrapper_source_name;
  std::string wrapper_source;
  // The `*.wrapper_metadata.json` entry (AOTI_DEVICE_KEY, AOTI_CPU_ISA, and
  // whatever `aot_inductor.metadata` added at compile time).
  std::map<std::string, std::string> metadata;
  // Every entry name of the archive, in archive order.
  std::vector<std::string> entries;
  // Sum of the uncompressed sizes of the model's files.
  uint64_t model_bytes = 0;
};

// Opens `path` as a zip and reads the files of model `model_name` (AOTI's
// default is "model"). Every entry is read once so that libzip checks its
// CRC-32. NOT_FOUND for a missing file, INVALID_ARGUMENT for something that is
// not a zip, an entry that is corrupt (CRC or compressed data) or a package
// that holds no AOTInductor model.
StatusOr<PackageFiles> ReadPackageFiles(const std::string& path,
                                        const std::string& model_name = "model");

}  // namespace pt2serve
