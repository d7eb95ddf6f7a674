#!/usr/bin/env bash
# Sanitizer builds of the unit tests, built and run in one go:
#   build-asan/  ASan + UBSan (gcc, -fno-omit-frame-pointer): runtime_test, server_test,
#                common_test, config_test
#   build-tsan/  TSan (gcc): runtime_test (runner pool, constant buffer manager,
#                model registry, dynamic batcher, hot-swap races), devices_test
#                (device staging's ring fed from several threads)
#
#   scripts/sanitizers.sh [asan|tsan|all] [CTEST_REGEX]
#
# CTEST_REGEX narrows the ctest tests run (default: every test of those
# binaries); PT2SERVE_ASAN_TARGETS / PT2SERVE_TSAN_TARGETS narrow what is
# built. Needs scripts/setup.sh to have run (the .venv with torch and the
# zoo packages); it runs it when build/env.sh is missing. Exit status is
# non-zero if a build failed, a test failed or a sanitizer reported anything.
# Times and findings: docs/sanitizers.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
which=${1:-all}
filter=${2:-}
log() { echo "[sanitizers] $*" >&2; }

[[ -f build/env.sh ]] || scripts/setup.sh
source build/env.sh
TORCH_PREFIX=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
JOBS=${PT2SERVE_BUILD_JOBS:-$(nproc)}

# LibTorch and the AOTInductor kernels are not instrumented. With one OpenMP
# thread their parallel regions run on the calling thread, so TSan does not
# see libgomp's own (uninstrumented) synchronisation as races.
export OMP_NUM_THREADS=1
SUPP=$ROOT/tools/sanitizers
# ASan: leak checking off, because LibTorch (uninstrumented, not ours) keeps
# process-lifetime allocations (op registries, the CPU allocator's caches)
# that LSan reports as leaks at exit; see docs/sanitizers.md. Every other ASan
# check stays on. UBSan: stop at the first report (-fno-sanitize-recover) and
# print the stack.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# intercept_tls_get_addr=0: gcc 12's TSan runtime dies ("failed to allocate
# 0x155555610c000 bytes") in its __tls_get_addr interceptor when a thread
# first touches a thread_local of the dlopen()ed model .so (runtime_test
# "with a queue delay a lone batched request ..."); see docs/sanitizers.md.
export TSAN_OPTIONS="suppressions=$SUPP/tsan.supp:second_deadlock_stack=1:halt_on_error=0:exitcode=66:intercept_tls_get_addr=0"

# TSan of gcc 12 cannot map its shadow memory with this kernel's 28-bit mmap
# randomization ("unexpected memory mapping"); the tests run with address
# randomization off for their process tree (setarch -R), which it needs.
NOASLR=(setarch "$(uname -m)" -R)

status=0
run_tree() {  # run_tree NAME SANITIZER TARGETS REGEX
  local name=$1 sanitizer=$2 targets=$3 regex=$4 dir=build-$1
  local t0=$SECONDS
  log "$name: configure + build ($targets) in $dir"
  local gen=()
  [[ -f $dir/CMakeCache.txt ]] || { command -v ninja >/dev/null && gen=(-G Ninja); }
  cmake -S . -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPT2SERVE_SANITIZE="$sanitizer" -DPT2SERVE_WERROR=OFF \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
    -DPT2SERVE_MODEL_DIR="$PT2SERVE_MODEL_DIR" -DPT2SERVE_PLAIN_DIR="$PT2SERVE_PLAIN_DIR" \
    -DPT2SERVE_PYTHON="$ROOT/.venv/bin/python" >/dev/null
  # shellcheck disable=SC2086
  if ! nice cmake --build "$dir" --parallel "$JOBS" --target $targets >&2; then
    log "$name: BUILD FAILED"
    status=1
    return
  fi
  local built=$((SECONDS - t0))
  log "$name: built in ${built}s; running ctest -R '$regex'"
  # The tests' own fixture dir, so this tree never races build/'s.
  if PT2SERVE_FIXTURE_DIR="$ROOT/$dir/fixtures" "${NOASLR[@]}" \
      ctest --test-dir "$dir" --output-on-failure --timeout 600 -j "$JOBS" -R "$regex"; then
    log "$name: PASS (build ${built}s, tests $((SECONDS - t0 - built))s)"
  else
    log "$name: FAIL (build ${built}s, tests $((SECONDS - t0 - built))s)"
    status=1
  fi
}

if [[ $which == asan || $which == all ]]; then
  run_tree asan address "${PT2SERVE_ASAN_TARGETS:-runtime_test common_test config_test server_test}" \
    "${filter:-^(make_fixture_packages|(runtime_test|common_test|config_test|server_test):.*)\$}"
fi
if [[ $which == tsan || $which == all ]]; then
  run_tree tsan thread "${PT2SERVE_TSAN_TARGETS:-runtime_test devices_test}" \
    "${filter:-^(make_fixture_packages|runtime_test:.*|devices_test:.*)\$}"
fi
exit $status
