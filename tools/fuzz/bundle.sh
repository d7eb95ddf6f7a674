#!/usr/bin/env bash
# Runs the libFuzzer targets on another x86-64 Linux machine with more cores
# (e.g. the CUDA device host, which has no clang and no Debian libraries).
#
#   tools/fuzz/bundle.sh pack [TARGET...]          # on the dev machine
#   tools/fuzz/bundle.sh run SECONDS TARGET:WORKERS...   # on the other machine
#
# pack: copies build-fuzz/tests/fuzz/<target>_fuzz (built by run_fuzzers.sh),
#   the shared libraries each one loads (as ldd resolves them here, except
#   glibc's own), the seeds and build-fuzz/corpus/<target> into .fuzz-bundle/
#   (git-ignored), and the same as .fuzz-bundle.tgz (a third of the size) to
#   carry to the other machine and unpack there with tar xzf.
# run: runs WORKERS libFuzzer processes per target for SECONDS, all targets at
#   once, sharing one corpus per target (-reload), and prints per target the
#   executions summed over its workers and the crashes. The grown corpus and
#   any crash inputs stay in .fuzz-bundle/; copy them back into build-fuzz/
#   (corpus/, artifacts/) and add the totals to build-fuzz/history.txt by hand.
#   Exit status is non-zero if a target crashed or a worker did not finish.
#   PT2SERVE_FUZZ_MAX_LEN caps the input size as in run_fuzzers.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=.fuzz-bundle
source tools/fuzz/fuzz_common.sh
mode=${1:?pack or run}
shift

if [[ $mode == pack ]]; then
  targets=("$@")
  ((${#targets[@]})) || targets=(kserve_request native_request upload_manifest safetensors
                                 signature_json server_config)
  rm -rf "$B" && mkdir -p "$B/bin" "$B/lib" "$B/corpus" "$B/seeds"
  for t in "${targets[@]}"; do
    exe=build-fuzz/tests/fuzz/${t}_fuzz
    [[ -x $exe ]] || { echo "$exe missing: run tools/fuzz/run_fuzzers.sh 1 $t first" >&2; exit 2; }
    cp "$exe" "$B/bin/"
    # Everything but the C library and the dynamic loader, which the target
    # machine must provide (glibc is backward compatible; these are not).
    ldd "$exe" | awk '/=> \// {print $3}' \
      | grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
      | xargs -r cp -n -L -t "$B/lib/"
    cp -r "tests/fuzz/corpus/$t" "$B/seeds/$t"
    mkdir -p "$B/corpus/$t"
    [[ -d build-fuzz/corpus/$t ]] && cp -r "build-fuzz/corpus/$t/." "$B/corpus/$t/"
  done
  tar -czf "$B.tgz" "$B"
  du -sh "$B" "$B.tgz"
  exit 0
fi

[[ $mode == run ]] || { echo "usage: $0 pack [TARGET...] | run SECONDS TARGET:WORKERS..." >&2; exit 2; }
seconds=${1:?SECONDS}
shift
export LD_LIBRARY_PATH=$PWD/$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p "$B/logs" "$B/artifacts"
for spec in "$@"; do
  t=${spec%%:*} n=${spec##*:}
  for ((w = 0; w < n; w++)); do
    # The options of run_fuzzers.sh; -reload picks up the other workers' finds.
    "$B/bin/${t}_fuzz" "$B/corpus/$t" "$B/seeds/$t" -max_total_time="$seconds" "${FUZZ_OPTS[@]}" \
      -reload=1 -artifact_prefix="$B/artifacts/$t-" >"$B/logs/$t.$w.log" 2>&1 &
  done
done
wait || true

status=0
printf '%-16s %8s %12s %8s %8s\n' target workers execs corpus crashes
for spec in "$@"; do
  t=${spec%%:*} n=${spec##*:}
  execs=0
  for ((w = 0; w < n; w++)); do
    e=$(sed -n 's/^stat::number_of_executed_units: *//p' "$B/logs/$t.$w.log" | tail -1)
    execs=$((execs + ${e:-0}))
    grep -q '^Done ' "$B/logs/$t.$w.log" || { status=1; echo "$t worker $w did not finish" >&2; }
  done
  crashes=$(count_failures "$B/artifacts" "$t")
  ((crashes == 0)) || status=1
  printf '%-16s %8s %12s %8s %8s\n' "$t" "$n" "$execs" "$(find "$B/corpus/$t" -type f | wc -l)" \
    "$crashes"
done
exit $status
