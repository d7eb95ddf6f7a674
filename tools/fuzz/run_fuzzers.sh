#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang in build-fuzz/ and runs
# each for SECONDS, then prints executions and crashes per target.
#
#   tools/fuzz/run_fuzzers.sh [SECONDS] [TARGET...]
#
# SECONDS defaults to 60; TARGETs default to all (kserve_request
# native_request upload_manifest safetensors signature_json server_config).
# PT2SERVE_FUZZ_JOBS=N runs N targets at once (default 1);
# PT2SERVE_FUZZ_MAX_LEN caps the input size (default 8192 bytes). Needs clang-14 and
# libclang-rt-14-dev (apt) and the .venv of scripts/setup.sh (the configure
# step finds LibTorch, though no fuzz target links it).
#
# Corpus: each target starts from the seeds in tests/fuzz/corpus/<target>/
# (read only) and keeps what it finds in build-fuzz/corpus/<target>/ between
# runs. A crash leaves its input in build-fuzz/artifacts/; add it to
# tests/fuzz/corpus/<target>/ as regression-<what> once fixed, so the replay
# test (ctest -L fuzz) keeps checking it. Results: docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(kserve_request native_request upload_manifest safetensors
                                signature_json server_config)
JOBS=${PT2SERVE_FUZZ_JOBS:-1}
CXX=${PT2SERVE_FUZZ_CXX:-clang++-14}
CC=${PT2SERVE_FUZZ_CC:-clang-14}
DIR=build-fuzz
source tools/fuzz/fuzz_common.sh
log() { echo "[fuzz] $*" >&2; }

command -v "$CXX" >/dev/null || { log "$CXX not found (apt-get install clang-14 libclang-rt-14-dev)"; exit 2; }
TORCH_PREFIX=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
t0=$SECONDS
gen=()
[[ -f $DIR/CMakeCache.txt ]] || { command -v ninja >/dev/null && gen=(-G Ninja); }
cmake -S . -B $DIR "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DPT2SERVE_FUZZ=ON \
  -DPT2SERVE_WERROR=OFF -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_C_COMPILER="$CC" \
  -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" >/dev/null
targets=()
for t in "${TARGETS[@]}"; do targets+=("${t}_fuzz"); done
nice cmake --build $DIR --parallel "${PT2SERVE_BUILD_JOBS:-$(nproc)}" --target "${targets[@]}" >&2
log "built in $((SECONDS - t0))s"

mkdir -p $DIR/artifacts $DIR/logs
fuzz_one() {
  local t=$1
  mkdir -p "$DIR/corpus/$t"
  # New inputs go to the first corpus dir (build-fuzz/), never to the seeds.
  nice -n 19 "$DIR/tests/fuzz/${t}_fuzz" "$DIR/corpus/$t" "tests/fuzz/corpus/$t" \
    -max_total_time="$SECONDS_PER_TARGET" "${FUZZ_OPTS[@]}" -artifact_prefix="$DIR/artifacts/$t-" \
    >"$DIR/logs/$t.log" 2>&1 || true
}
running=0
for t in "${TARGETS[@]}"; do
  fuzz_one "$t" &
  running=$((running + 1))
  if ((running >= JOBS)); then wait -n; running=$((running - 1)); fi
done
wait

status=0
printf '%-16s %12s %10s %8s %8s %8s\n' target execs execs/s seconds corpus crashes
for t in "${TARGETS[@]}"; do
  logf=$DIR/logs/$t.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logf" | tail -1)
  corpus=$(find "$DIR/corpus/$t" -type f | wc -l)
  crashes=$(count_failures "$DIR/artifacts" "$t")
  printf '%-16s %12s %10s %8s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "$SECONDS_PER_TARGET" \
    "$corpus" "$crashes"
  # Totals over every run, for docs/fuzzing.md.
  echo "$(date -u +%FT%TZ) $t execs=${execs:-0} seconds=$SECONDS_PER_TARGET crashes=$crashes" \
    >> $DIR/history.txt
  if ((crashes)) || ! grep -q "^Done " "$logf"; then
    status=1
    log "$t: see $logf"
  fi
done
exit $status
