#include "tools/bench/bench_util.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace pt2serve::bench {

int64_t NowNs() {
  static const BenchClock::time_point origin = BenchClock::now();
  return std::chrono::duration_cast<std::chrono::nanoseconds>(BenchClock::now() - origin).count();
}

LatencySummary Summarize(std::vector<double>& samples_us) {
  LatencySummary s;
  s.count = samples_us.size();
  if (samples_us.empty()) return s;
  std::sort(samples_us.begin(), samples_us.end());
  // Nearest rank: the smallest sample with at least q of all samples <= it.
  auto rank = [&](double q) {
    size_t k = static_cast<size_t>(std::ceil(q * static_cast<double>(samples_us.size())));
    return samples_us[std::min(samples_us.size() - 1, k == 0 ? 0 : k - 1)];
  };
  double sum = 0;
  for (double v : samples_us) sum += v;
  s.mean_us = sum / static_cast<double>(samples_us.size());
  s.p50_us = rank(0.50);
  s.p90_us = rank(0.90);
  s.p99_us = rank(0.99);
  s.max_us = samples_us.back();
  return s;
}

double Median(std::vector<double> values) {
  return Summarize(values).p50_us;
}

DriverResult RunClosedLoop(const DriverOptions& options, const CallFactory& factory) {
  const int n = std::max(1, options.streams);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<int64_t> window_begin{0}, window_end{0};
  std::vector<std::vector<double>> latencies(n);
  std::vector<uint64_t> errors(n, 0);
  std::mutex error_mu;
  std::string first_error;

  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      BenchCall call = factory(i);
      std::vector<double>& lat = latencies[i];
      lat.reserve(1 << 16);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      const int64_t begin = window_begin.load(), end = window_end.load();
      std::string error;
      for (;;) {
        const int64_t t0 = NowNs();
        if (t0 >= end) break;
        const bool ok = call ? call(&error) : false;
        const int64_t t1 = NowNs();
        if (options.pause_us > 0) {
          std::this_thread::sleep_for(std::chrono::nanoseconds(
              static_cast<int64_t>(options.pause_us * 1e3)));
        }
        if (t0 < begin) continue;  // warm-up
        if (ok) {
          lat.push_back(static_cast<double>(t1 - t0) / 1e3);
        } else {
          ++errors[i];
          std::lock_guard lock(error_mu);
          if (first_error.empty()) first_error = call ? error : "stream setup failed";
        }
      }
    });
  }
  while (ready.load() < n) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const int64_t begin = NowNs() + static_cast<int64_t>(options.warmup_s * 1e9);
  window_begin = begin;
  window_end = begin + static_cast<int64_t>(options.seconds * 1e9);
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();

  DriverResult r;
  r.streams = n;
  r.seconds = options.seconds;
  std::vector<double> all;
  for (int i = 0; i < n; ++i) {
    all.insert(all.end(), latencies[i].begin(), latencies[i].end());
    r.errors += errors[i];
  }
  r.ok = all.size();
  r.first_error = first_error;
  r.rps = options.seconds > 0 ? static_cast<double>(r.ok) / options.seconds : 0;
  r.latency = Summarize(all);
  return r;
}

// ------------------------------------------------------------ input data

namespace {

uint16_t FloatToHalfBits(float f) {
  // Values are small and finite here; round to nearest, flush tiny to zero.
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffffu;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  uint32_t half = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  if (mant & 0x1000u) ++half;  // round half up
  return static_cast<uint16_t>(half);
}

uint16_t FloatToBFloat16Bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

template <typename T>
void Put(std::vector<std::byte>& out, int64_t i, T v) {
  std::memcpy(out.data() + i * sizeof(T), &v, sizeof(T));
}

}  // namespace

std::vector<std::byte> SyntheticData(DType dtype, int64_t count, uint64_t seed) {
  std::vector<std::byte> out(static_cast<size_t>(count) * DTypeSize(dtype));
  uint64_t state = seed * 0x9e3779b97f4a7c15ull + 1;
  auto next = [&] {  // xorshift64*
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545f4914f6cdd1dull;
  };
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t r = next();
    const float f = static_cast<float>(r >> 40) / static_cast<float>(1 << 23) - 1.0f;  // [-1, 1)
    const int small = static_cast<int>(r >> 61);                                       // [0, 8)
    switch (dtype) {
      case DType::kBool: Put<uint8_t>(out, i, static_cast<uint8_t>(small & 1)); break;
      case DType::kUInt8: Put<uint8_t>(out, i, static_cast<uint8_t>(small)); break;
      case DType::kInt8: Put<int8_t>(out, i, static_cast<int8_t>(small)); break;
      case DType::kInt16: Put<int16_t>(out, i, static_cast<int16_t>(small)); break;
      case DType::kInt32: Put<int32_t>(out, i, small); break;
      case DType::kInt64: Put<int64_t>(out, i, small); break;
      case DType::kFloat16: Put<uint16_t>(out, i, FloatToHalfBits(f)); break;
      case DType::kBFloat16: Put<uint16_t>(out, i, FloatToBFloat16Bits(f)); break;
      case DType::kFloat32: Put<float>(out, i, f); break;
      case DType::kFloat64: Put<double>(out, i, static_cast<double>(f)); break;
    }
  }
  return out;
}

Shape ConcreteShape(const Shape& shape, int64_t batch) {
  Shape out = shape;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] < 0) out[i] = i == 0 ? batch : 1;
  }
  return out;
}

StatusOr<TensorSpec> ParseInputSpec(const std::string& text) {
  const auto c1 = text.find(':');
  const auto c2 = c1 == std::string::npos ? c1 : text.find(':', c1 + 1);
  if (c2 == std::string::npos || c1 == 0) {
    return InvalidArgument("--input '" + text + "': expected NAME:DTYPE:D0,D1,...");
  }
  TensorSpec spec;
  spec.name = text.substr(0, c1);
  auto dtype = DTypeFromName(text.substr(c1 + 1, c2 - c1 - 1));
  if (!dtype) return InvalidArgument("--input '" + text + "': unknown dtype");
  spec.dtype = *dtype;
  const std::string dims = text.substr(c2 + 1);
  if (!dims.empty()) {
    std::stringstream ss(dims);
    for (std::string d; std::getline(ss, d, ',');) {
      try {
        spec.shape.push_back(std::stoll(d));
      } catch (const std::exception&) {
        return InvalidArgument("--input '" + text + "': bad dimension '" + d + "'");
      }
    }
  }
  return spec;
}

StatusOr<std::vector<int>> ParseIntList(const std::string& text) {
  std::vector<int> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      size_t used = 0;
      const int v = std::stoi(item, &used);
      if (used != item.size() || v <= 0) throw std::invalid_argument(item);
      out.push_back(v);
    } catch (const std::exception&) {
      return InvalidArgument("'" + text + "': expected positive integers like 1,2,4");
    }
  }
  if (out.empty()) return InvalidArgument("empty list");
  return out;
}

// ---------------------------------------------------------------- output

std::string MarkdownHeader() {
  return "| protocol | model | batch | streams | req/s | p50 us | p90 us | p99 us | errors |\n"
         "|---|---|---|---|---|---|---|---|---|";
}

std::string MarkdownRow(const ResultRow& row) {
  const DriverResult& r = row.result;
  char buf[512];
  std::snprintf(buf, sizeof(buf), "| %s | %s | %lld | %d | %.0f | %.1f | %.1f | %.1f | %llu |",
                row.protocol.c_str(), row.model.c_str(), static_cast<long long>(row.batch),
                r.streams, r.rps, r.latency.p50_us, r.latency.p90_us, r.latency.p99_us,
                static_cast<unsigned long long>(r.errors));
  return buf;
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char u[8];
          std::snprintf(u, sizeof(u), "\\u%04x", c);
          out += u;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string JsonRow(const ResultRow& row) {
  const DriverResult& r = row.result;
  char buf[1024];
  std::snprintf(buf, sizeof(buf),
                "{\"protocol\":\"%s\",\"model\":\"%s\",\"batch\":%lld,\"streams\":%d,"
                "\"seconds\":%.3f,\"ok\":%llu,\"errors\":%llu,\"rps\":%.1f,\"mean_us\":%.2f,"
                "\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"max_us\":%.2f,",
                JsonEscape(row.protocol).c_str(), JsonEscape(row.model).c_str(),
                static_cast<long long>(row.batch), r.streams, r.seconds,
                static_cast<unsigned long long>(r.ok), static_cast<unsigned long long>(r.errors),
                r.rps, r.latency.mean_us, r.latency.p50_us, r.latency.p90_us, r.latency.p99_us,
                r.latency.max_us);
  return std::string(buf) + "\"first_error\":\"" + JsonEscape(r.first_error) + "\"}";
}

bool AppendLine(const std::string& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  out << line << '\n';
  return static_cast<bool>(out);
}

int EmitRow(const char* tool, const ResultRow& row, const std::string& json_path) {
  std::printf("%s\n", MarkdownRow(row).c_str());
  std::fflush(stdout);
  const DriverResult& r = row.result;
  if (r.errors > 0) {
    std::fprintf(stderr, "%s: %llu failed requests, first: %s\n", tool,
                 static_cast<unsigned long long>(r.errors), r.first_error.c_str());
  }
  if (!json_path.empty() && !AppendLine(json_path, JsonRow(row))) {
    std::fprintf(stderr, "%s: cannot write %s\n", tool, json_path.c_str());
    return 2;
  }
  return r.errors > 0 ? 1 : 0;
}

}  // namespace pt2serve::bench
