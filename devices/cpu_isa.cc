#include "devices/cpu_isa.h"

#include <sys/utsname.h>

#include <cctype>
#include <sstream>
#include <string>
#include <vector>

namespace pt2serve {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Python's names for the machines uname reports differently elsewhere.
std::string CanonicalMachine(std::string_view machine) {
  std::string m = Lower(machine);
  if (m == "amd64") return "x86_64";
  if (m == "arm64") return "aarch64";
  return m;
}

std::string HostPlatform() {
#if defined(__linux__)
  return "linux";
#elif defined(__APPLE__)
  return "darwin";
#else
  return "";
#endif
}

// The CPU features an Inductor vector ISA name needs (its compile flags), and
// the ones of them this CPU lacks. Unknown names need nothing checkable.
std::vector<std::string> MissingFeatures(const std::string& isa) {
  std::vector<std::string> missing;
#if defined(__x86_64__) || defined(__i386__)
  auto need = [&](bool present, const char* name) {
    if (!present) missing.emplace_back(name);
  };
  __builtin_cpu_init();
  if (isa == "AVX2") {
    need(__builtin_cpu_supports("avx2"), "avx2");
    need(__builtin_cpu_supports("fma"), "fma");
  } else if (isa == "AVX512") {
    need(__builtin_cpu_supports("avx512f"), "avx512f");
    need(__builtin_cpu_supports("avx512dq"), "avx512dq");
    need(__builtin_cpu_supports("avx512vl"), "avx512vl");
    need(__builtin_cpu_supports("avx512bw"), "avx512bw");
    need(__builtin_cpu_supports("fma"), "fma");
  } else if (isa == "AVX512_VNNI") {
    need(__builtin_cpu_supports("avx512vnni"), "avx512vnni");
  } else if (isa == "AMX_TILE") {
    need(__builtin_cpu_supports("amx-tile"), "amx-tile");
    need(__builtin_cpu_supports("amx-bf16"), "amx-bf16");
    need(__builtin_cpu_supports("amx-int8"), "amx-int8");
  }
#else
  (void)isa;
#endif
  return missing;
}

}  // namespace

Status CheckCpuCanRun(std::string_view platform, std::string_view machine, std::string_view isa) {
  const std::string host_platform = HostPlatform();
  if (!platform.empty() && !host_platform.empty() && Lower(platform) != host_platform) {
    return FailedPrecondition("package was compiled on platform '" + std::string(platform) +
                              "', this host is '" + host_platform + "'");
  }
  utsname host{};
  if (!machine.empty() && ::uname(&host) == 0 &&
      CanonicalMachine(machine) != CanonicalMachine(host.machine)) {
    return FailedPrecondition("package was compiled for machine '" + std::string(machine) +
                              "', this host is '" + host.machine + "'");
  }
  std::vector<std::string> missing;
  std::istringstream names{std::string(isa)};
  for (std::string name; names >> name;) {
    for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    for (std::string& f : MissingFeatures(name)) missing.push_back(std::move(f));
  }
  if (!missing.empty()) {
    std::string list;
    for (const std::string& f : missing) list += (list.empty() ? "" : ", ") + f;
    return FailedPrecondition("package was compiled for CPU ISA '" + std::string(isa) +
                              "' and this CPU lacks " + list +
                              " (running it would crash); export it on a CPU like this one");
  }
  return Status::Ok();
}

}  // namespace pt2serve
