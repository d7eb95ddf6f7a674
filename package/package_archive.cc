#include "package/package_archive.h"

#include <zip.h>

#include <filesystem>
#include <memory>
#include <vector>
#include <nlohmann/json.hpp>

namespace pt2serve {
namespace {

// Wrapper sources of large models reach a few MiB; refuse absurd entries
// rather than allocating whatever a crafted archive claims.
constexpr uint64_t kMaxTextEntry = 256ull << 20;

struct ZipCloser {
  void operator()(zip_t* z) const { zip_discard(z); }
};

StatusOr<std::string> ReadEntry(zip_t* zip, zip_uint64_t index, const std::string& name) {
  zip_stat_t st;
  zip_stat_init(&st);
  if (zip_stat_index(zip, index, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE)) {
    return InvalidArgument("cannot stat archive entry " + name);
  }
  if (st.size > kMaxTextEntry) {
    return InvalidArgument("archive entry " + name + " is too large (" +
                           std::to_string(st.size) + " bytes)");
  }
  std::unique_ptr<zip_file_t, int (*)(zip_file_t*)> file(zip_fopen_index(zip, index, 0),
                                                         zip_fclose);
  if (!file) return InvalidArgument("cannot open archive entry " + name);
  std::string data(st.size, '\0');
  zip_int64_t got = zip_fread(file.get(), data.data(), st.size);
  if (got < 0 || static_cast<zip_uint64_t>(got) != st.size) {
    return InvalidArgument("corrupt archive entry " + name);
  }
  return data;
}

// Reads entry `index` to its end, which makes libzip check its CRC-32.
Status VerifyEntry(zip_t* zip, zip_uint64_t index, const std::string& name) {
  std::unique_ptr<zip_file_t, int (*)(zip_file_t*)> file(zip_fopen_index(zip, index, 0),
                                                         zip_fclose);
  if (!file) {
    return InvalidArgument("cannot open archive entry " + name + ": " + zip_strerror(zip));
  }
  std::vector<char> buffer(1 << 20);
  for (;;) {
    const zip_int64_t got = zip_fread(file.get(), buffer.data(), buffer.size());
    if (got == 0) return Status::Ok();
    if (got < 0) {
      return InvalidArgument("archive entry " + name + " is corrupt (" +
                             zip_file_strerror(file.get()) + ")");
    }
  }
}

}  // namespace

StatusOr<PackageFiles> ReadPackageFiles(const std::string& path, const std::string& model_name) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return NotFound("package file not found: " + path);
  }
  int err = 0;
  std::unique_ptr<zip_t, ZipCloser> zip(zip_open(path.c_str(), ZIP_RDONLY, &err));
  if (!zip) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, err);
    std::string why = zip_error_strerror(&ze);
    zip_error_fini(&ze);
    return InvalidArgument("not a .pt2 package (" + why + "): " + path);
  }
  PackageFiles files;
  files.path = path;
  const std::string dir = "/data/aotinductor/" + model_name + "/";
  std::string metadata_json;
  const zip_int64_t n = zip_get_num_entries(zip.get(), 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    const char* raw = zip_get_name(zip.get(), static_cast<zip_uint64_t>(i), 0);
    if (!raw) continue;
    std::string name = raw;
    files.entries.push_back(name);
    if (Status intact = VerifyEntry(zip.get(), static_cast<zip_uint64_t>(i), name); !intact.ok()) {
      return intact.WithPrefix("package " + path);
    }
    const size_t at = name.find(dir);
    if (at == std::string::npos) continue;
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip.get(), static_cast<zip_uint64_t>(i), 0, &st) == 0 &&
        (st.valid & ZIP_STAT_SIZE)) {
      files.model_bytes += st.size;
    }
    const std::string base = name.substr(at + dir.size());
    if (base.find('/') != std::string::npos) continue;
    if (base.ends_with(".wrapper.cpp")) {
      PT2_ASSIGN_OR_RETURN(files.wrapper_source,
                           ReadEntry(zip.get(), static_cast<zip_uint64_t>(i), name));
      files.wrapper_source_name = name;
    } else if (base.ends_with(".wrapper_metadata.json")) {
      PT2_ASSIGN_OR_RETURN(metadata_json, ReadEntry(zip.get(), static_cast<zip_uint64_t>(i), name));
    }
  }
  if (metadata_json.empty()) {
    return InvalidArgument("package " + path + " holds no AOTInductor model '" + model_name +
                           "' (no data/aotinductor/" + model_name +
                           "/*.wrapper_metadata.json)");
  }
  auto j = nlohmann::json::parse(metadata_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgument("package " + path + ": wrapper metadata is not a JSON object");
  }
  for (const auto& [k, v] : j.items()) {
    files.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  return files;
}

}  // namespace pt2serve
