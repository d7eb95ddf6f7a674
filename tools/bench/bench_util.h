// Shared pieces of the benchmark tools: a closed-loop load driver, latency
// statistics, synthetic input data and the Markdown/JSON result format.
//
// Torch-free AND protobuf-free on purpose: grpc_bench (gRPC stubs) and the
// in-process benches (LibTorch behind pt2serve_runtime) both include it, and
// no translation unit may see both LibTorch's bundled protobuf headers and
// generated gRPC code.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/tensor.h"

namespace pt2serve::bench {

using BenchClock = std::chrono::steady_clock;

// Nanoseconds on BenchClock since an arbitrary process-wide origin.
int64_t NowNs();

// Latency percentiles over a set of samples (microseconds).
struct LatencySummary {
  size_t count = 0;
  double mean_us = 0, p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;
};
// Sorts `samples_us` in place. Nearest-rank percentiles; zeros when empty.
LatencySummary Summarize(std::vector<double>& samples_us);
// Median of `values` (copied); 0 when empty.
double Median(std::vector<double> values);

// ----------------------------------------------------------- closed loop

// One closed-loop call: returns true on success. `error` receives a message
// on failure (only the first failure of a run is reported).
using BenchCall = std::function<bool(std::string* error)>;
// Creates stream `index`'s call; runs on that stream's thread before the
// clock starts (open a channel, build the request, ...).
using CallFactory = std::function<BenchCall(int index)>;

struct DriverOptions {
  int streams = 1;
  double warmup_s = 1.0;   // calls in this phase are not counted
  double seconds = 5.0;    // measured window
  // Sleep between a stream's calls (not timed): the caller idles as a
  // server's worker does between the requests of a remote client.
  double pause_us = 0;
};

struct DriverResult {
  int streams = 0;
  double seconds = 0;      // measured window
  uint64_t ok = 0;         // successful calls that started in the window
  uint64_t errors = 0;     // failed calls that started in the window
  std::string first_error;
  double rps = 0;          // ok / seconds
  LatencySummary latency;  // successful calls that started in the window
};

// `streams` threads, each calling its BenchCall back to back (a closed loop:
// one outstanding call per stream) through warm-up and the measured window.
// A call counts if it started inside the window; the driver waits for the
// calls in flight at the end of the window.
DriverResult RunClosedLoop(const DriverOptions& options, const CallFactory& factory);

// ------------------------------------------------------------ input data

// `count` elements of `dtype` with small, finite, deterministic values (no
// NaN/denormal slow paths): floats in [-1, 1), ints in [0, 8), bools 0/1.
std::vector<std::byte> SyntheticData(DType dtype, int64_t count, uint64_t seed = 1);

// Replaces every -1 (dynamic) dimension by `batch` for the leading
// dimension and by 1 elsewhere.
Shape ConcreteShape(const Shape& shape, int64_t batch);

// Parses "NAME:DTYPE:D0,D1,..." (dtype as torch names it: float32, int64..).
StatusOr<TensorSpec> ParseInputSpec(const std::string& text);

// "1,2,4" -> {1, 2, 4}. INVALID_ARGUMENT for anything else.
StatusOr<std::vector<int>> ParseIntList(const std::string& text);

// ---------------------------------------------------------------- output

// One result line: what was measured and how it went.
struct ResultRow {
  std::string protocol;  // "native", "kserve", "in-process", ...
  std::string model;
  int64_t batch = 1;
  DriverResult result;
};

// Markdown table header (two lines) and one row of it.
std::string MarkdownHeader();
std::string MarkdownRow(const ResultRow& row);
// One JSON object on one line (no trailing newline).
std::string JsonRow(const ResultRow& row);
// Appends `line` + '\n' to `path`; false on I/O error.
bool AppendLine(const std::string& path, const std::string& line);

// What every load tool does with a finished row: prints it as a Markdown row
// on stdout (flushed), reports failed calls on stderr ("TOOL: N failed
// requests, first: ...") and appends the JSON row to `json_path` if set.
// Returns 0 when every call succeeded, 1 when some failed, 2 when the JSON
// file cannot be written.
int EmitRow(const char* tool, const ResultRow& row, const std::string& json_path);

// Minimal JSON string escaping for the rows above.
std::string JsonEscape(const std::string& s);

}  // namespace pt2serve::bench
