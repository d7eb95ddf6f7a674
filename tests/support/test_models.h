// Helpers for tests that use the exported zoo packages.
//
// The packages come from tools/export/export_model.py; scripts/setup.sh
// exports them into a cache and passes the directory through the
// PT2SERVE_MODEL_DIR environment variable (set by ctest).
#pragma once

#include <string>
#include <vector>

#include "common/safetensors.h"
#include "common/tensor.h"

namespace pt2serve::testing {

// The model directory; fails the test (throws) if PT2SERVE_MODEL_DIR is unset.
std::string ModelDir();
// <ModelDir>/<name>.pt2
std::string PackagePath(const std::string& name);
// <fixture dir>/<file>: broken packages made by make_fixture_packages.py.
std::string FixturePath(const std::string& file);
// <plain dir>/<name>.pt2: packages made by plain aoti_compile_and_package
// (tests/support/plain_packages.py; PT2SERVE_PLAIN_DIR).
std::string PlainPackagePath(const std::string& name);
// A fresh writable directory for a test's files.
std::string TempDir();

// The exporter's reference pair for a zoo model: inputs ("input.<name>") and
// the eager module's outputs ("output.<name>") with the compiled-in weights.
struct Reference {
  std::vector<Tensor> inputs;
  std::vector<Tensor> outputs;
};
Reference LoadReference(const std::string& name);
// The same from any reference file (e.g. fixtures' mlp.seed7.reference.safetensors).
Reference LoadReferenceFile(const std::string& path);

// Element values as double (float16/bfloat16/ints included).
std::vector<double> ToDoubles(const Tensor& t);

// Empty when `actual` matches `expected` (same dtype and shape, values within
// atol + rtol * |expected|); otherwise a description of the first mismatch.
std::string CompareTensors(const Tensor& actual, const Tensor& expected,
                           double rtol = 1e-4, double atol = 1e-5);

}  // namespace pt2serve::testing
