// A main() for the fuzz targets when they are built without libFuzzer (the
// ordinary gcc build): feeds every file given (or every file in a directory
// given) to LLVMFuzzerTestOneInput, then, with -runs=N, N inputs made by
// random byte-level mutations of those files (fixed -seed, so a failure
// reproduces). No coverage feedback: it replays the corpus and smoke-tests
// the target; tools/fuzz/run_fuzzers.sh does the real fuzzing with libFuzzer.
//
//   kserve_request_fuzz [-runs=N] [-seed=S] FILE_OR_DIR...
//
// Prints the number of inputs run; a failed property aborts (non-zero exit)
// after saving the input that failed to ./replay-crash-input.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_check.h"

namespace {

using Bytes = std::vector<uint8_t>;

bool ReadFile(const std::filesystem::path& path, Bytes& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

// The input being run, for the crash handler. Only main's thread runs inputs.
const Bytes* g_current = nullptr;

// On abort or a fault: saves the input to ./replay-crash-input (then add it
// to the corpus once fixed) and dies with the same signal. Async-signal-safe.
void SaveCrashInput(int sig) {
  if (g_current) {
    const int fd = ::open("replay-crash-input", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      (void)!::write(fd, g_current->data(), g_current->size());
      ::close(fd);
    }
    static constexpr char kMsg[] = "replay: failing input saved to ./replay-crash-input\n";
    (void)!::write(2, kMsg, sizeof(kMsg) - 1);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void Run(const Bytes& input) {
  g_current = &input;
  // An exact-size heap copy, so a read past the end is an ASan error in a
  // sanitizer build (as with libFuzzer).
  std::vector<uint8_t> copy(input);
  LLVMFuzzerTestOneInput(copy.empty() ? nullptr : copy.data(), copy.size());
  g_current = nullptr;
}

Bytes Mutate(const std::vector<Bytes>& corpus, std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return n ? static_cast<size_t>(rng() % n) : 0; };
  Bytes b = corpus[pick(corpus.size())];
  const int steps = 1 + static_cast<int>(pick(4));
  for (int s = 0; s < steps; ++s) {
    switch (pick(8)) {
      case 0:  // flip a bit
        if (!b.empty()) b[pick(b.size())] ^= static_cast<uint8_t>(1u << pick(8));
        break;
      case 1:  // an interesting byte value
        if (!b.empty()) {
          static constexpr uint8_t kValues[] = {0, 1, 0x7f, 0x80, 0xff, '-', '[', '{'};
          b[pick(b.size())] = kValues[pick(sizeof(kValues))];
        }
        break;
      case 2: {  // insert random bytes
        const size_t at = pick(b.size() + 1), n = 1 + pick(8);
        for (size_t i = 0; i < n; ++i) b.insert(b.begin() + at, static_cast<uint8_t>(rng()));
        break;
      }
      case 3:  // erase a range
        if (!b.empty()) {
          const size_t at = pick(b.size()), n = 1 + pick(std::min<size_t>(16, b.size() - at));
          b.erase(b.begin() + at, b.begin() + at + n);
        }
        break;
      case 4:  // truncate
        b.resize(pick(b.size() + 1));
        break;
      case 5:  // duplicate a range
        if (!b.empty()) {
          const size_t at = pick(b.size()), n = 1 + pick(std::min<size_t>(32, b.size() - at));
          Bytes range(b.begin() + at, b.begin() + at + n);
          b.insert(b.begin() + pick(b.size() + 1), range.begin(), range.end());
        }
        break;
      case 6: {  // splice in part of another input
        const Bytes& other = corpus[pick(corpus.size())];
        if (!other.empty()) {
          const size_t at = pick(other.size());
          const size_t n = 1 + pick(other.size() - at);
          b.insert(b.begin() + pick(b.size() + 1), other.begin() + at, other.begin() + at + n);
        }
        break;
      }
      default:  // overwrite with a random byte
        if (!b.empty()) b[pick(b.size())] = static_cast<uint8_t>(rng());
        break;
    }
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, SaveCrashInput);
  long runs = 0;
  unsigned long long seed = 1;
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("-runs=", 0) == 0) {
      runs = std::stol(arg.substr(6));
    } else if (arg.rfind("-seed=", 0) == 0) {
      seed = std::stoull(arg.substr(6));
    } else if (std::filesystem::is_directory(arg)) {
      for (const auto& e : std::filesystem::directory_iterator(arg)) {
        if (e.is_regular_file()) files.push_back(e.path());
      }
    } else {
      files.emplace_back(arg);
    }
  }
  std::sort(files.begin(), files.end());
  std::vector<Bytes> corpus;
  for (const auto& path : files) {
    Bytes b;
    if (!ReadFile(path, b)) {
      std::fprintf(stderr, "cannot read %s\n", path.c_str());
      return 2;
    }
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), b.size());
    Run(b);
    corpus.push_back(std::move(b));
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "no inputs given\n");
    return 2;
  }
  std::mt19937_64 rng(seed);
  for (long r = 0; r < runs; ++r) {
    Run(Mutate(corpus, rng));
  }
  std::printf("%zu corpus files and %ld mutations run, no failure\n", corpus.size(), runs);
  return 0;
}
