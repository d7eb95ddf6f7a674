#include "runtime/weight_set_check.h"

#include <algorithm>
#include <map>
#include <set>

#include "common/sha256.h"

namespace pt2serve {
namespace {

std::string Quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

void FindProblems(const std::vector<ConstantInfo>& constants,
                  const std::vector<OfferedTensor>& offered, std::vector<std::string>& problems) {
  std::map<std::string_view, int> count;
  for (const OfferedTensor& o : offered) ++count[o.name];
  for (const ConstantInfo& c : constants) {
    if (!count.contains(c.fqn)) problems.push_back("missing " + Quoted(c.fqn));
  }
  std::map<std::string_view, const ConstantInfo*> by_fqn;
  for (const ConstantInfo& c : constants) by_fqn[c.fqn] = &c;
  std::set<std::string_view> reported_duplicates;
  for (const OfferedTensor& o : offered) {
    auto it = by_fqn.find(o.name);
    if (it == by_fqn.end()) {
      problems.push_back("unknown " + Quoted(o.name) +
                         " (not an updatable constant of this package; GetModel lists them)");
      continue;
    }
    if (count[o.name] > 1) {
      if (reported_duplicates.insert(o.name).second) {
        problems.push_back(Quoted(o.name) + " given " + std::to_string(count[o.name]) +
                           " times");
      }
      continue;
    }
    const ConstantInfo& c = *it->second;
    bool layout_ok = true;
    if (o.dtype != c.dtype) {
      problems.push_back(Quoted(o.name) + " has dtype " + std::string(DTypeName(o.dtype)) +
                         ", expected " + std::string(DTypeName(c.dtype)));
      layout_ok = false;
    }
    if (*o.shape != c.shape) {
      problems.push_back(Quoted(o.name) + " has shape " + ShapeToString(*o.shape) +
                         ", expected " + ShapeToString(c.shape));
      layout_ok = false;
    }
    if (layout_ok && o.nbytes && *o.nbytes != c.nbytes) {
      problems.push_back(Quoted(o.name) + " has " + std::to_string(*o.nbytes) +
                         " bytes of data, expected " + std::to_string(c.nbytes));
    }
  }
}

void CheckOptions(const StageOptions& options, std::vector<std::string>& problems) {
  if (options.version.empty()) problems.push_back("no version label given");
  if (options.sha256_follows && !options.sha256.empty()) {
    problems.push_back("a sha256 was given up front and announced to follow the data");
  }
  if (!options.sha256.empty() && !Sha256::IsHexDigest(options.sha256)) {
    problems.push_back("sha256 " + Quoted(options.sha256) + " is not 64 hex digits");
  }
}

}  // namespace

std::vector<std::string> WeightSetProblems(const std::vector<ConstantInfo>& constants,
                                           const std::vector<OfferedTensor>& offered,
                                           const StageOptions& options) {
  std::vector<std::string> problems;
  CheckOptions(options, problems);
  FindProblems(constants, offered, problems);
  return problems;
}

Status ProblemsStatus(const std::string& model, const std::vector<std::string>& problems) {
  std::string msg = std::to_string(problems.size()) +
                    (problems.size() == 1 ? " problem" : " problems") +
                    " with the weights for model '" + model + "': ";
  const size_t listed = std::min(problems.size(), kMaxListedProblems);
  for (size_t i = 0; i < listed; ++i) {
    if (i) msg += "; ";
    msg += problems[i];
  }
  if (listed < problems.size()) {
    msg += "; ... and " + std::to_string(problems.size() - listed) + " more";
  }
  return InvalidArgument(std::move(msg));
}

}  // namespace pt2serve
