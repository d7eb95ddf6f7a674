#include "package/package_signature.h"

#include <nlohmann/json.hpp>
#include <set>

namespace pt2serve {
namespace {

using nlohmann::json;

// pytree spec: [version, node]; node = {"type", "context", "children_spec"}.
const json* Root(const json& spec) {
  if (spec.is_array() && spec.size() == 2 && spec[1].is_object()) return &spec[1];
  return nullptr;
}

bool IsLeaf(const json& node) {
  return node.contains("type") && node["type"].is_null();
}

std::vector<std::string> DictKeys(const json& node) {
  std::vector<std::string> keys;
  if (!node.contains("context") || !node["context"].is_string()) return keys;
  json ctx = json::parse(node["context"].get<std::string>(), nullptr, false);
  if (!ctx.is_array()) return keys;
  for (const auto& k : ctx) keys.push_back(k.is_string() ? k.get<std::string>() : k.dump());
  return keys;
}

void CountLeaves(const json& node, size_t& n) {
  if (IsLeaf(node)) {
    ++n;
    return;
  }
  for (const auto& c : node.value("children_spec", json::array())) CountLeaves(c, n);
}

// Leaf names in flattening order: kwargs' direct leaves keep their key.
std::vector<std::string> InputNames(const std::string& in_spec, size_t count) {
  std::vector<std::string> names;
  for (size_t i = 0; i < count; ++i) names.push_back("input__" + std::to_string(i));
  json spec = json::parse(in_spec, nullptr, false);
  const json* root = Root(spec);
  if (!root || root->value("type", json()) != "builtins.tuple") return names;
  const auto& top = (*root)["children_spec"];
  if (!top.is_array() || top.size() != 2) return names;
  size_t args = 0;
  CountLeaves(top[0], args);
  const json& kwargs = top[1];
  const auto keys = DictKeys(kwargs);
  const auto& children = kwargs.value("children_spec", json::array());
  size_t flat = args;
  for (size_t k = 0; k < children.size(); ++k) {
    size_t leaves = 0;
    CountLeaves(children[k], leaves);
    if (leaves == 1 && IsLeaf(children[k]) && k < keys.size() && flat < count) {
      names[flat] = keys[k];
    }
    flat += leaves;
  }
  if (flat != count) {  // the spec does not describe these inputs: keep positional names
    names.clear();
    for (size_t i = 0; i < count; ++i) names.push_back("input__" + std::to_string(i));
  }
  return names;
}

std::vector<std::string> OutputNames(const std::string& out_spec, size_t count) {
  std::vector<std::string> names;
  for (size_t i = 0; i < count; ++i) names.push_back("output__" + std::to_string(i));
  json spec = json::parse(out_spec, nullptr, false);
  const json* root = Root(spec);
  if (!root || root->value("type", json()) != "builtins.dict") return names;
  const auto keys = DictKeys(*root);
  const auto& children = root->value("children_spec", json::array());
  if (keys.size() != count || children.size() != count) return names;
  for (const auto& c : children) {
    if (!IsLeaf(c)) return names;
  }
  return keys;
}

bool IsSymbol(const std::string& e) {
  if (e.empty() || !(std::isalpha(static_cast<unsigned char>(e[0])) || e[0] == '_')) return false;
  for (char c : e) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

bool IsLiteral(const std::string& e, int64_t& v) {
  if (e.empty()) return false;
  size_t i = e[0] == '-' ? 1 : 0;
  if (i == e.size()) return false;
  for (; i < e.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(e[i]))) return false;
  }
  v = std::stoll(e);
  return true;
}

}  // namespace

StatusOr<DerivedSignature> DeriveSignature(const WrapperFacts& facts) {
  DerivedSignature out;
  Signature& sig = out.signature;
  const auto in_names = InputNames(facts.in_spec, facts.inputs.size());
  bool lowered_min = false;
  for (size_t i = 0; i < facts.inputs.size(); ++i) {
    const WrapperInput& in = facts.inputs[i];
    TensorSpec spec;
    spec.name = in_names[i];
    if (!in.dtype) {
      return InvalidArgument("cannot derive the dtype of input " + std::to_string(i) +
                             " from the package; declare the model's signature in the config");
    }
    spec.dtype = *in.dtype;
    size_t rank = 0;
    if (in.has_dim_exprs) {
      rank = in.dim_exprs.size();
    } else {
      for (const auto* m : {&in.fixed, &in.min, &in.max}) {
        if (!m->empty()) rank = std::max(rank, m->rbegin()->first + 1);
      }
      if (rank == 0) {
        return InvalidArgument("cannot derive the rank of input " + std::to_string(i) +
                               " from the package; declare the model's signature in the config");
      }
      out.notes.push_back("input " + spec.name + ": rank taken from its dim checks");
    }
    for (size_t d = 0; d < rank; ++d) {
      const std::string expr = in.has_dim_exprs ? in.dim_exprs[d] : "";
      int64_t literal = 0;
      auto fixed = in.fixed.find(d);
      if (fixed != in.fixed.end() || IsLiteral(expr, literal)) {
        spec.shape.push_back(fixed != in.fixed.end() ? fixed->second : literal);
        spec.dims.push_back(DimRange{spec.shape.back(), spec.shape.back(), ""});
        continue;
      }
      spec.shape.push_back(-1);
      DimRange r;
      if (auto it = in.min.find(d); it != in.min.end()) r.min = it->second;
      if (auto it = in.max.find(d); it != in.max.end()) r.max = it->second;
      if (r.min == 2) {
        r.min = 1;
        lowered_min = true;
      }
      if (IsSymbol(expr)) r.symbol = expr;
      spec.dims.push_back(std::move(r));
    }
    sig.inputs.push_back(std::move(spec));
  }
  if (lowered_min) {
    out.notes.push_back(
        "dynamic dims the package records as >= 2 accept 1 (torch.export's 0/1 specialization)");
  }
  if (facts.output_names.empty()) {
    return InvalidArgument("the package declares no outputs");
  }
  for (const auto& name : OutputNames(facts.out_spec, facts.output_names.size())) {
    sig.outputs.push_back(TensorSpec{name, DType::kFloat32, {}, {}});
  }
  // Batched (Triton's max_batch_size) when every input's dim 0 is one shared,
  // bounded dynamic symbol.
  const std::string* batch = nullptr;
  int64_t max_batch = 0;
  bool batched = !sig.inputs.empty();
  for (const TensorSpec& s : sig.inputs) {
    if (s.shape.empty() || s.shape[0] >= 0 || s.dims[0].symbol.empty() ||
        s.dims[0].max == DimRange::kUnbounded || (batch && *batch != s.dims[0].symbol)) {
      batched = false;
      break;
    }
    batch = &s.dims[0].symbol;
    max_batch = s.dims[0].max;
  }
  if (batched && max_batch <= INT32_MAX) sig.max_batch_size = max_batch;
  return out;
}

StatusOr<Signature> ReconcileDeclared(const Signature& declared, const DerivedSignature& derived) {
  const Signature& pkg = derived.signature;
  if (declared.inputs.size() != pkg.inputs.size()) {
    return InvalidArgument("declared signature has " + std::to_string(declared.inputs.size()) +
                           " inputs, the package takes " + std::to_string(pkg.inputs.size()));
  }
  if (declared.outputs.size() != pkg.outputs.size()) {
    return InvalidArgument("declared signature has " + std::to_string(declared.outputs.size()) +
                           " outputs, the package returns " + std::to_string(pkg.outputs.size()));
  }
  Signature out = declared;
  std::set<std::string> names;
  for (size_t i = 0; i < out.inputs.size(); ++i) {
    TensorSpec& d = out.inputs[i];
    const TensorSpec& p = pkg.inputs[i];
    const std::string who = "declared input " + std::to_string(i) + " '" + d.name + "'";
    if (!names.insert("in:" + d.name).second) return InvalidArgument(who + " is named twice");
    if (d.dtype != p.dtype) {
      return InvalidArgument(who + " has dtype " + std::string(DTypeName(d.dtype)) +
                             ", the package takes " + std::string(DTypeName(p.dtype)));
    }
    if (d.shape.size() != p.shape.size()) {
      return InvalidArgument(who + " has shape " + ShapeToString(d.shape) +
                             ", the package takes rank " + std::to_string(p.shape.size()) + " " +
                             ShapeToString(p.shape));
    }
    if (d.dims.empty()) d.dims.resize(d.shape.size());
    for (size_t k = 0; k < d.shape.size(); ++k) {
      const std::string dim = who + " dim " + std::to_string(k);
      if (p.shape[k] >= 0) {
        if (d.shape[k] != p.shape[k]) {
          return InvalidArgument(dim + " is " + std::to_string(d.shape[k]) +
                                 ", the package fixes it to " + std::to_string(p.shape[k]));
        }
        d.dims[k] = p.dims.empty() ? DimRange{p.shape[k], p.shape[k], ""} : p.dims[k];
        continue;
      }
      const DimRange pr = p.dims.empty() ? DimRange{} : p.dims[k];
      DimRange& dr = d.dims[k];
      if (d.shape[k] >= 0) {  // declaring a fixed size for a dynamic dim narrows it
        if (d.shape[k] < pr.min || d.shape[k] > pr.max) {
          return InvalidArgument(dim + " is " + std::to_string(d.shape[k]) +
                                 ", outside the package's range");
        }
        continue;
      }
      // An unset bound (min 0, max unbounded) is the package's.
      if (dr.min == 0) dr.min = pr.min;
      if (dr.max == DimRange::kUnbounded) dr.max = pr.max;
      if (dr.min < pr.min || dr.max > pr.max) {
        return InvalidArgument(dim + " range is wider than the package's (" +
                               std::to_string(pr.min) + ".." +
                               (pr.max == DimRange::kUnbounded ? std::string("inf")
                                                               : std::to_string(pr.max)) +
                               ")");
      }
      if (dr.symbol.empty()) dr.symbol = pr.symbol;
    }
  }
  for (const TensorSpec& o : out.outputs) {
    if (!names.insert("out:" + o.name).second) {
      return InvalidArgument("declared output '" + o.name + "' is named twice");
    }
  }
  if (declared.max_batch_size > 0) {
    for (const TensorSpec& s : out.inputs) {
      if (s.shape.empty() || s.shape[0] >= 0) {
        return InvalidArgument("declared max_batch_size " +
                               std::to_string(declared.max_batch_size) + " but input '" +
                               s.name + "' has no dynamic dim 0");
      }
      if (declared.max_batch_size > s.dims[0].max) {
        return InvalidArgument("declared max_batch_size " +
                               std::to_string(declared.max_batch_size) +
                               " exceeds the package's bound " + std::to_string(s.dims[0].max) +
                               " of input '" + s.name + "' dim 0");
      }
    }
  } else {
    out.max_batch_size = pkg.max_batch_size;
  }
  return out;
}

}  // namespace pt2serve
