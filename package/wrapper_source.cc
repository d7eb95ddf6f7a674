#include "package/wrapper_source.h"

#include <charconv>
#include <regex>

namespace pt2serve {
namespace {

// What the parser relies on (torch 2.13 output; each line form is matched on
// its own, so unrelated changes elsewhere in the file do not matter):
//   inputs_info_[0].name = "arg9_1";          outputs_info_[0].name = "output0";
//   constants_info_[0].<field> = <value>;     in_spec_ = R"(...)";  out_spec_ = R"(...)";
//   static void check_input_0(                (per-input checks follow)
//     int32_t arg9_1_expected_dtype = aoti_torch_dtype_int64();
//     if (arg9_1_size[1] < 2) {   if (arg9_1_size[1] > 32) {   if (16 != arg9_1_size[1]) {
//   assert_size_stride(arg9_1, {s31, s27}, {s27, 1L}, "input");
//   "use_runtime_constant_folding=False" in the stub const_run_impl.
const std::regex kInfoName(R"re(^\s*(inputs|outputs)_info_\[(\d+)\]\.name = "([^"]*)";)re");
const std::regex kConstField(R"re(^\s*constants_info_\[(\d+)\]\.(\w+) = (.*);\s*$)re");
const std::regex kCheckFn(R"re(static void check_input_(\d+)\()re");
const std::regex kDtype(R"re(int32_t (\w+)_expected_dtype = aoti_torch_dtype_(\w+)\(\);)re");
const std::regex kBound(R"re(if \((\w+)_size\[(\d+)\] ([<>]) (-?\d+)L?\))re");
const std::regex kFixed(R"re(if \((-?\d+)L? != (\w+)_size\[(\d+)\]\))re");
const std::regex kAssert(R"re(assert_size_stride\((\w+), \{([^}]*)\}, \{[^}]*\}, "input"\))re");

int64_t ToInt(const std::string& s) {
  int64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

std::string Trim(std::string s) {
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// "16L" -> "16", "2L*s27" -> "2*s27", "s31" -> "s31".
std::string NormalizeExpr(std::string e) {
  std::string out;
  for (size_t i = 0; i < e.size(); ++i) {
    if (e[i] == 'L' && i > 0 && std::isdigit(static_cast<unsigned char>(e[i - 1]))) continue;
    if (e[i] != ' ') out += e[i];
  }
  return out;
}

std::string Unquote(const std::string& v) {
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') return v.substr(1, v.size() - 2);
  return v;
}

std::string RawString(const std::string& line) {
  const auto b = line.find("R\"(");
  const auto e = line.rfind(")\"");
  if (b == std::string::npos || e == std::string::npos || e < b + 3) return "";
  return line.substr(b + 3, e - b - 3);
}

template <typename T>
T& At(std::vector<T>& v, size_t i) {
  if (v.size() <= i) v.resize(i + 1);
  return v[i];
}

void SetConstantField(WrapperConstant& c, const std::string& field, const std::string& value) {
  if (field == "name") {
    c.name = Unquote(value);
  } else if (field == "original_fqn") {
    c.fqn = Unquote(value);
  } else if (field == "dtype") {
    const std::string prefix = "cached_torch_dtype_";
    const auto at = value.find(prefix);
    if (at != std::string::npos) c.dtype = DTypeFromName(value.substr(at + prefix.size()));
  } else if (field == "data_size") {
    c.nbytes = static_cast<uint64_t>(ToInt(value));
  } else if (field == "from_folded") {
    c.from_folded = value == "true";
  } else if (field == "type") {
    const auto at = value.find("ConstantType::");
    if (at != std::string::npos) {
      std::string t = value.substr(at + 14);
      c.type = t.substr(0, t.find(')'));
    }
  } else if (field == "shape") {
    c.shape.clear();
    std::string inner = value.substr(value.find('{') + 1);
    inner = inner.substr(0, inner.find('}'));
    size_t pos = 0;
    while (pos < inner.size()) {
      size_t comma = inner.find(',', pos);
      std::string item = Trim(inner.substr(pos, comma - pos));
      if (!item.empty()) c.shape.push_back(ToInt(item));
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  }
}

}  // namespace

StatusOr<WrapperFacts> ParseWrapperSource(std::string_view source) {
  WrapperFacts facts;
  std::map<std::string, size_t> input_by_placeholder;
  int current_check = -1;  // index of the check_input_<i> we are inside
  size_t pos = 0;
  std::smatch m;
  while (pos < source.size()) {
    size_t eol = source.find('\n', pos);
    if (eol == std::string_view::npos) eol = source.size();
    const std::string line(source.substr(pos, eol - pos));
    pos = eol + 1;
    if (line.find("_info_[") != std::string::npos) {
      if (std::regex_search(line, m, kInfoName)) {
        const size_t i = static_cast<size_t>(ToInt(m[2]));
        if (m[1] == "inputs") {
          At(facts.inputs, i).placeholder = m[3];
          input_by_placeholder[m[3]] = i;
        } else {
          At(facts.output_names, i) = m[3];
        }
      } else if (std::regex_search(line, m, kConstField)) {
        SetConstantField(At(facts.constants, static_cast<size_t>(ToInt(m[1]))), m[2], m[3]);
      }
      continue;
    }
    if (line.find("in_spec_ = R\"(") != std::string::npos) {
      facts.in_spec = RawString(line);
      continue;
    }
    if (line.find("out_spec_ = R\"(") != std::string::npos) {
      facts.out_spec = RawString(line);
      continue;
    }
    if (line.find("use_runtime_constant_folding=False") != std::string::npos) {
      facts.runtime_constant_folding = false;
      continue;
    }
    if (line.find("check_input_") != std::string::npos && std::regex_search(line, m, kCheckFn)) {
      current_check = static_cast<int>(ToInt(m[1]));
      continue;
    }
    if (line.starts_with("}")) current_check = -1;  // a function body ends at column 0
    if (current_check >= 0 && static_cast<size_t>(current_check) < facts.inputs.size()) {
      WrapperInput& in = facts.inputs[static_cast<size_t>(current_check)];
      if (std::regex_search(line, m, kDtype) && m[1] == in.placeholder) {
        in.dtype = DTypeFromName(m[2].str());
      } else if (std::regex_search(line, m, kBound) && m[1] == in.placeholder) {
        (m[3] == "<" ? in.min : in.max)[static_cast<size_t>(ToInt(m[2]))] = ToInt(m[4]);
      } else if (std::regex_search(line, m, kFixed) && m[2] == in.placeholder) {
        in.fixed[static_cast<size_t>(ToInt(m[3]))] = ToInt(m[1]);
      }
      continue;
    }
    if (line.find("assert_size_stride(") != std::string::npos &&
        std::regex_search(line, m, kAssert)) {
      auto it = input_by_placeholder.find(m[1]);
      if (it == input_by_placeholder.end()) continue;
      WrapperInput& in = facts.inputs[it->second];
      if (in.has_dim_exprs) continue;
      in.has_dim_exprs = true;
      const std::string dims = m[2];
      size_t p = 0;
      while (p < dims.size()) {
        size_t comma = dims.find(',', p);
        std::string item = NormalizeExpr(Trim(dims.substr(p, comma - p)));
        if (!item.empty()) in.dim_exprs.push_back(item);
        if (comma == std::string::npos) break;
        p = comma + 1;
      }
    }
  }
  if (facts.inputs.empty() && facts.output_names.empty()) {
    return InvalidArgument("not an AOTInductor wrapper source (no inputs_info_/outputs_info_)");
  }
  for (size_t i = 0; i < facts.inputs.size(); ++i) {
    if (facts.inputs[i].placeholder.empty()) {
      return InvalidArgument("wrapper source names no input " + std::to_string(i));
    }
  }
  return facts;
}

}  // namespace pt2serve
