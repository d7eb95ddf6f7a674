#!/usr/bin/env bash
# run_benchmarks.sh: runs every pt2serve benchmark in sequence and writes the
# results as Markdown (see docs/benchmarks.md).
#
#   tools/bench/run_benchmarks.sh RESULTS.md MODEL_DIR [options]
#
# MODEL_DIR holds exported packages (tools/export/export_model.py zoo): mlp.pt2
# and mlp.weights.safetensors are required; big_mlp.pt2 and
# big_mlp.weights.safetensors (zoo --models big_mlp, ~200 MB) are needed for the
# upload benchmark, which is skipped without them. For a CUDA host pass the
# directory of CUDA-compiled packages: nothing below is CPU-specific (the
# device comes from the package unless --device says otherwise).
#
# Sections: host, pool_bench (raw loader vs RunnerPool vs Model), gRPC vs
# in-process (daemon started here on a free port: pt2serve native + KServe,
# 1..16 streams), hot-swaps through the daemon under 16-stream gRPC load,
# swap_bench (pt2serve vs raw AOTInductor), upload+stage throughput with
# daemon RSS, optional perf_analyzer, and the issue targets with verdicts.
# Raw JSON lines and logs go to RESULTS.data/ next to the results file.
#
# Options:
#   --build-dir DIR      build tree (default: <repo>/build)
#   --big-dir DIR        directory with big_mlp.pt2 (default: MODEL_DIR); also the daemon's
#                        model repository for the server-side push
#   --big-model NAME     model of the upload section (default big_mlp; huge_mlp is the 2 GB
#                        set of tools/bench/huge_mlp.py)
#   --big-weights FILE   weight set to push (default: BIG_DIR/BIG_MODEL.weights.safetensors;
#                        the server-side push runs when it lies under BIG_DIR)
#   --runners N          runners of mlp, daemon and in-process (default 2)
#   --streams LIST       stream counts (default 1,2,4,8,16)
#   --seconds S          measured window per point (default 5)
#   --warmup S           warm-up per point (default 1)
#   --swap-threads T     swap_bench client threads (default 8)
#   --swap-runners R     swap_bench runners (default 2)
#   --swap-cycles N      swap_bench cycles (default 20)
#   --swap-models LIST   packages in MODEL_DIR for swap_bench, comma-separated (default mlp)
#   --load-swaps N       hot-swaps pushed through the daemon under load (default 10)
#   --device D           device for every model (default auto: the package's)
#   --quick              smoke test: 1 s windows, 0.3 s warm-up, 5 swap cycles
#   --skip-pool --skip-grpc --skip-swap --skip-upload
# Environment: PERF_ANALYZER=/path/to/perf_analyzer adds Triton's perf_analyzer
# against the KServe endpoint (the PyPI `perf-analyzer` package is a
# placeholder without a binary, so it is not installed by default).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
[[ $# -ge 2 ]] || usage
RESULTS=$(realpath -m "$1")
MODEL_DIR=$(realpath "$2")
shift 2

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD_DIR=$REPO/build
BIG_DIR=$MODEL_DIR
BIG_MODEL=big_mlp
BIG_WEIGHTS=""
RUNNERS=2
STREAMS=1,2,4,8,16
SECS=5
WARMUP=1
SWAP_THREADS=8
SWAP_RUNNERS=2
SWAP_CYCLES=20
SWAP_MODELS=mlp
LOAD_SWAPS=10
DEVICE=auto
SKIP_POOL=0 SKIP_GRPC=0 SKIP_SWAP=0 SKIP_UPLOAD=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --build-dir) BUILD_DIR=$(realpath "$2"); shift 2 ;;
    --big-dir) BIG_DIR=$(realpath "$2"); shift 2 ;;
    --big-weights) BIG_WEIGHTS=$(realpath "$2"); shift 2 ;;
    --big-model) BIG_MODEL=$2; shift 2 ;;
    --runners) RUNNERS=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --swap-threads) SWAP_THREADS=$2; shift 2 ;;
    --swap-runners) SWAP_RUNNERS=$2; shift 2 ;;
    --swap-cycles) SWAP_CYCLES=$2; shift 2 ;;
    --swap-models) SWAP_MODELS=$2; shift 2 ;;
    --load-swaps) LOAD_SWAPS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --quick) SECS=1; WARMUP=0.3; SWAP_CYCLES=5; LOAD_SWAPS=3; shift ;;
    --skip-pool) SKIP_POOL=1; shift ;;
    --skip-grpc) SKIP_GRPC=1; shift ;;
    --skip-swap) SKIP_SWAP=1; shift ;;
    --skip-upload) SKIP_UPLOAD=1; shift ;;
    -h|--help) usage ;;
    *) echo "run_benchmarks.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ -n $BIG_WEIGHTS ]] || BIG_WEIGHTS=$BIG_DIR/$BIG_MODEL.weights.safetensors

BENCH=$BUILD_DIR/tools/bench
DAEMON=$BUILD_DIR/server/pt2serve
PT2CTL=$BUILD_DIR/tools/pt2ctl/pt2ctl
REPORT="python3 $REPO/tools/bench/bench_report.py"
for exe in "$BENCH/pool_bench" "$BENCH/inproc_bench" "$BENCH/grpc_bench" "$BENCH/upload_bench" \
           "$BENCH/swap_bench" "$BENCH/loopback_bench" "$DAEMON"; do
  [[ -x $exe ]] || { echo "run_benchmarks.sh: $exe not built (ninja -C $BUILD_DIR grpc_bench" \
                          "inproc_bench swap_bench upload_bench pool_bench loopback_bench pt2serve)" >&2; exit 2; }
done
[[ -f $MODEL_DIR/mlp.pt2 ]] || { echo "run_benchmarks.sh: no mlp.pt2 in $MODEL_DIR" >&2; exit 2; }
command -v python3 >/dev/null || { echo "run_benchmarks.sh: needs python3" >&2; exit 2; }

DATA=${RESULTS%.md}.data
rm -rf "$DATA"
mkdir -p "$DATA" "$(dirname "$RESULTS")"
WORK=$(mktemp -d /tmp/pt2serve-bench.XXXXXX)
(umask 077; echo "bench-$(date +%s%N)-$RANDOM$RANDOM" > "$WORK/token")
: > "$RESULTS"

DAEMON_PID=""
BG_PIDS=()
cleanup() {
  for p in ${BG_PIDS[@]+"${BG_PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  if [[ -n $DAEMON_PID ]]; then kill -TERM "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

out() { printf '%s\n' "$*" | tee -a "$RESULTS"; }
# Runs a command; its stdout goes to the results and the terminal, stderr to the terminal.
record() { "$@" | tee -a "$RESULTS"; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_daemon LOGNAME --model SPEC...: starts the daemon on a free inference
# port and a private admin socket; sets DAEMON_PID, INFER_ADDR, ADMIN_ADDR.
DAEMON_SEQ=0
start_daemon() {
  local name=$1; shift
  local attempt port
  for attempt in 1 2 3; do
    DAEMON_SEQ=$((DAEMON_SEQ + 1))
    port=$(free_port)
    ADMIN_ADDR=unix:$WORK/admin.$DAEMON_SEQ.sock
    INFER_ADDR=127.0.0.1:$port
    "$DAEMON" "$@" --inference-address "$INFER_ADDR" --admin-address "$ADMIN_ADDR" \
      --metrics-address '' --admin-token-file "$WORK/token" > "$DATA/$name.daemon.log" 2>&1 &
    DAEMON_PID=$!
    local i
    for i in $(seq 300); do
      grep -q "listening" "$DATA/$name.daemon.log" 2>/dev/null && return 0
      kill -0 "$DAEMON_PID" 2>/dev/null || break
      sleep 0.1
    done
    log "daemon did not come up (attempt $attempt): $(tail -n 3 "$DATA/$name.daemon.log")"
    kill "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=""
  done
  return 1
}

stop_daemon() {
  [[ -n $DAEMON_PID ]] || return 0
  kill -TERM "$DAEMON_PID"
  local rc=0
  wait "$DAEMON_PID" || rc=$?
  [[ $rc -eq 0 ]] || log "daemon exited with status $rc"
  DAEMON_PID=""
}

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

model_opts() { # NAME PATH RUNNERS
  local opts="runners=$3,queue=1024"
  [[ $DEVICE == auto ]] || opts="$opts,device=$DEVICE"
  echo "$1=$2:$opts"
}

# ------------------------------------------------------------------ host
out "# pt2serve benchmark results"
out ""
out "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
out "- host: $(hostname) ($(uname -srm))"
out "- CPU: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1), $(nproc) logical cores" \
    "($(grep -c ^processor /proc/cpuinfo) online)"
out "- memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
if command -v nvidia-smi >/dev/null 2>&1; then
  while IFS= read -r gpu; do out "- GPU: $gpu"; done < <(nvidia-smi \
    --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi failed")
else
  out "- GPU: none (no nvidia-smi)"
fi
out "- pt2serve: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (+ local changes)')"
out "- packages: $MODEL_DIR (device: $DEVICE)"
out "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
out "- settings: runners $RUNNERS, streams $STREAMS, ${SECS} s windows after ${WARMUP} s warm-up"
out ""

# ------------------------------------------------------------ pool_bench
if [[ $SKIP_POOL == 0 ]]; then
  log "pool_bench"
  out "## In-process: raw loader vs RunnerPool vs Model (pool_bench, mlp batch 1)"
  out ""
  out "raw = AOTIModelPackageLoader::run() called directly; pool = the same call behind RunnerPool"
  out "admission; model = Model::Infer (validation, conversion, copy-out). pool_bench sets"
  out "at::set_num_threads(1)."
  out ""
  "$BENCH/pool_bench" "$MODEL_DIR/mlp.pt2" --seconds "$SECS" | tee "$DATA/pool_bench.md" >> "$RESULTS" \
    || log "pool_bench failed"
  sed -n '3,$p' "$DATA/pool_bench.md" >&2
  out ""
fi

# -------------------------------------------------- gRPC vs in-process
INPROC=$DATA/inproc.jsonl NATIVE=$DATA/native.jsonl KSERVE=$DATA/kserve.jsonl LOADSWAP=$DATA/load_swaps.jsonl
FLOOR=$DATA/floor.jsonl
if [[ $SKIP_GRPC == 0 ]]; then
  log "inproc_bench"
  inproc_dev=()
  [[ $DEVICE == auto ]] || inproc_dev=(--device "$DEVICE")
  "$BENCH/inproc_bench" "$MODEL_DIR/mlp.pt2" --runners "$RUNNERS" ${inproc_dev[@]+"${inproc_dev[@]}"} --streams "$STREAMS" \
    --seconds "$SECS" --warmup "$WARMUP" --json "$INPROC" > "$DATA/inproc.md" || log "inproc_bench: failures"
  log "daemon with mlp ($RUNNERS runners)"
  start_daemon grpc --model "$(model_opts mlp "$MODEL_DIR/mlp.pt2" "$RUNNERS")"
  log "grpc_bench native"
  "$BENCH/grpc_bench" --address "$INFER_ADDR" --protocol native --model mlp --streams "$STREAMS" \
    --seconds "$SECS" --warmup "$WARMUP" --json "$NATIVE" > "$DATA/native.md" || log "native: failures (see table)"
  log "grpc_bench kserve"
  "$BENCH/grpc_bench" --address "$INFER_ADDR" --protocol kserve --model mlp --streams "$STREAMS" \
    --seconds "$SECS" --warmup "$WARMUP" --json "$KSERVE" > "$DATA/kserve.md" || log "kserve: failures (see table)"

  log "latency floors: loopback echo, gRPC ServerLive, ModelStreamInfer (1 stream)"
  "$BENCH/loopback_bench" --transport pipe,unix,tcp --streams 1 --seconds "$SECS" \
    --warmup "$WARMUP" --json "$FLOOR" > "$DATA/floor.md" || log "loopback_bench: failures"
  "$BENCH/grpc_bench" --address "$INFER_ADDR" --protocol live --streams 1 --no-header \
    --seconds "$SECS" --warmup "$WARMUP" >> "$DATA/floor.md" || log "live: failures"
  "$BENCH/grpc_bench" --address "$INFER_ADDR" --protocol kserve-stream --model mlp --streams 1 \
    --no-header --seconds "$SECS" --warmup "$WARMUP" >> "$DATA/floor.md" || log "kserve-stream: failures"

  out "## gRPC vs in-process (mlp, batch 1, $RUNNERS runners, loopback)"
  out ""
  out "Closed loop: each stream keeps one request outstanding; one TCP connection per stream."
  out "in-process = inproc_bench (Model::Infer in its own process, same driver and inputs);"
  out "native = pt2serve.v1 Run; kserve = KServe v2 ModelInfer with raw contents. The client runs on"
  out "the same host as the daemon and competes with it for CPU."
  out ""
  record $REPORT side-by-side "$INPROC" "$NATIVE" "$KSERVE"
  out ""
  out "<details><summary>per-protocol rows</summary>"
  out ""
  record cat "$DATA/inproc.md"
  record sed -n '3,$p' "$DATA/native.md"
  record sed -n '3,$p' "$DATA/kserve.md"
  out ""
  out "</details>"
  out ""
  out "Latency floors on this host, 1 stream: a 64-byte echo between two threads over a pipe, a"
  out "Unix socket and loopback TCP (loopback_bench: two wake-ups and the kernel path, no RPC"
  out "stack), an empty KServe ServerLive call with the same gRPC client (no model work), and mlp"
  out "over one open ModelStreamInfer stream (no per-call HTTP/2 stream set-up):"
  out ""
  record cat "$DATA/floor.md"
  out ""

  # Hot-swaps through the admin API while 16 gRPC streams run (issue 5).
  log "hot-swaps under 16-stream load"
  load_secs=$(python3 -c "print(max(float('$SECS'), 3 + 0.8 * $LOAD_SWAPS))")
  "$BENCH/grpc_bench" --address "$INFER_ADDR" --protocol native --model mlp --streams 16 \
    --seconds "$load_secs" --warmup 1 --label "native, no swaps" --json "$DATA/load_base.jsonl" \
    > "$DATA/load_base.md" 2>> "$DATA/grpc_errors.log" || log "grpc_bench baseline: failures"
  "$BENCH/grpc_bench" --address "$INFER_ADDR" --protocol native --model mlp --streams 16 \
    --seconds "$load_secs" --warmup 1 --label "native during swaps" --json "$DATA/load_grpc.jsonl" \
    > "$DATA/load_grpc.md" 2>> "$DATA/grpc_errors.log" &
  BG_PIDS+=($!)
  sleep 2
  for i in $(seq "$LOAD_SWAPS"); do
    "$BENCH/upload_bench" --admin-address "$ADMIN_ADDR" --token-file "$WORK/token" --model mlp \
      --weights "$MODEL_DIR/mlp.weights.safetensors" --version "load-$i" --no-free \
      --json "$LOADSWAP" > /dev/null || log "swap $i under load failed"
    sleep 0.3
  done
  wait "${BG_PIDS[-1]}" || log "grpc_bench during swaps: failures"
  unset 'BG_PIDS[-1]'
  out "## Hot-swap through the daemon under 16-stream gRPC load (mlp)"
  out ""
  out "$LOAD_SWAPS x (push the weights over the admin API, then SwapConstantBuffer) while 16 native"
  out "streams run; the client numbers cover the whole window, swaps included. Round trip = the"
  out "admin client's SwapConstantBuffer call."
  out ""
  record $REPORT swap-under-load "$LOADSWAP" "$DATA/load_grpc.jsonl"
  out ""
  out "The same 16-stream load just before, without swaps, and during the swaps:"
  out ""
  record head -n 3 "$DATA/load_base.md"
  record sed -n '3p' "$DATA/load_grpc.md"
  out ""

  # Optional: Triton's perf_analyzer against the KServe endpoint.
  PA=${PERF_ANALYZER:-$(command -v perf_analyzer || true)}
  out "## perf_analyzer"
  out ""
  if [[ -n $PA && -x $PA ]]; then
    log "perf_analyzer ($PA)"
    out "| concurrency | infer/s | p50 us | p90 us | p99 us |"
    out "|---|---|---|---|---|"
    IFS=, read -ra counts <<< "$STREAMS"
    for c in "${counts[@]}"; do
      csv=$DATA/perf_analyzer.$c.csv
      if "$PA" -m mlp -i grpc -u "$INFER_ADDR" -b 1 --shape x:16 --concurrency-range "$c:$c" \
           --measurement-interval "$(python3 -c "print(int(float('$SECS') * 1000))")" -f "$csv" \
           > "$DATA/perf_analyzer.$c.log" 2>&1; then
        python3 - "$csv" <<'EOF' | tee -a "$RESULTS"
import csv, sys
for r in csv.DictReader(open(sys.argv[1])):
    print(f"| {r['Concurrency']} | {float(r['Inferences/Second']):.0f} | {r['p50 latency']} | "
          f"{r['p90 latency']} | {r['p99 latency']} |")
EOF
      else
        out "| $c | failed: $(grep -v '^\s*$' "$DATA/perf_analyzer.$c.log" | tail -n 1) | | | |"
      fi
    done
  else
    out "skipped: no perf_analyzer binary (set PERF_ANALYZER=/path/to/perf_analyzer). The PyPI"
    out "\`perf-analyzer\` package is a placeholder without a binary."
  fi
  out ""
  stop_daemon
fi

# ------------------------------------------------------------ swap_bench
SWAPJSON=$DATA/swap.jsonl
if [[ $SKIP_SWAP == 0 ]]; then
  out "## Weight hot-swap under load: pt2serve vs raw AOTInductor (swap_bench)"
  out ""
  IFS=, read -ra swap_models <<< "$SWAP_MODELS"
  for m in "${swap_models[@]}"; do
    [[ -f $MODEL_DIR/$m.pt2 ]] || { out "skipped $m: no $MODEL_DIR/$m.pt2"; continue; }
    log "swap_bench $m"
    swap_dev=()
    [[ $DEVICE == auto ]] || swap_dev=(--device "$DEVICE")
    record "$BENCH/swap_bench" "$MODEL_DIR/$m.pt2" ${swap_dev[@]+"${swap_dev[@]}"} --threads "$SWAP_THREADS" \
      --runners "$SWAP_RUNNERS" --cycles "$SWAP_CYCLES" --steady "$SECS" --warmup "$WARMUP" \
      --json "$SWAPJSON" || log "swap_bench $m reported failures"
    out ""
  done
fi

# ---------------------------------------------------------------- upload
if [[ $SKIP_UPLOAD == 0 ]]; then
  out "## Weight upload + stage throughput and daemon memory ($BIG_MODEL)"
  out ""
  if [[ ! -f $BIG_DIR/$BIG_MODEL.pt2 || ! -f $BIG_WEIGHTS ]]; then
    out "skipped: needs $BIG_DIR/$BIG_MODEL.pt2 and $BIG_WEIGHTS"
    out "(tools/export/export_model.py zoo --models big_mlp)."
  else
    log "daemon with $BIG_MODEL"
    start_daemon upload --model "$(model_opts "$BIG_MODEL" "$BIG_DIR/$BIG_MODEL.pt2" "$RUNNERS")" \
      --model-repository "$BIG_DIR"
    "$BENCH/grpc_bench" --address "$INFER_ADDR" --model "$BIG_MODEL" --wait 120 --wait-only
    out "Daemon VmRSS once $BIG_MODEL is READY: $(rss_mb "$DAEMON_PID") MB. A short inference run first, so"
    out "that the active weights are constant-folded (that memory is part of serving, not of the push):"
    out ""
    "$BENCH/grpc_bench" --address "$INFER_ADDR" --protocol native --model "$BIG_MODEL" --streams 1,"$RUNNERS" \
      --seconds "$SECS" --warmup "$WARMUP" --json "$DATA/${BIG_MODEL}_grpc.jsonl" | tee -a "$RESULTS" \
      || log "big_mlp inference failures"
    out ""
    out "Daemon VmRSS after serving: $(rss_mb "$DAEMON_PID") MB."
    out ""
    # no checksum; SHA-256 in the header (client hashes before the clock); SHA-256 in the
    # trailer (client hashes while sending, as pt2ctl does); the file read by the server.
    server_side=()
    case $BIG_WEIGHTS in
      "$BIG_DIR"/*) server_side=("--server-path ${BIG_WEIGHTS#"$BIG_DIR"/} --sha256") ;;
    esac
    for mode in "" --sha256 --sha256-trailer "${server_side[@]}"; do
      log "upload_bench $BIG_MODEL $mode"
      # shellcheck disable=SC2086  # $mode is a list of options
      record "$BENCH/upload_bench" --admin-address "$ADMIN_ADDR" --token-file "$WORK/token" \
        --model "$BIG_MODEL" --weights "$BIG_WEIGHTS" --pid "$DAEMON_PID" $mode --json "$DATA/upload.jsonl" \
        || log "upload_bench failed"
    done
    if [[ -x $PT2CTL ]]; then
      log "pt2ctl weights push"
      out "The same through \`pt2ctl weights push --swap\` (what an operator runs; its time includes"
      out "parsing the file and hashing it on the client, while sending):"
      out ""
      if "$PT2CTL" --admin-address "$ADMIN_ADDR" --token-file "$WORK/token" --json weights push "$BIG_MODEL" \
           "$BIG_WEIGHTS" --version pt2ctl-push --swap > "$DATA/pt2ctl_push.json" 2> "$DATA/pt2ctl_push.err"; then
        python3 - "$DATA/pt2ctl_push.json" "$BIG_MODEL" <<'EOF' | tee -a "$RESULTS"
import json, sys
r = json.load(open(sys.argv[1]))
c, u, s = r["client"], r["update"], r.get("swap", {})
mb = int(c["bytes_sent"]) / 1e6
print("| pt2ctl push --swap | MB | seconds | MB/s | server staging ms | swap (server) ms |")
print("|---|---|---|---|---|---|")
print(f"| {sys.argv[2]} | {mb:.1f} | {c['seconds']:.2f} | {mb / c['seconds']:.0f} | "
      f"{int(u['fold_time_us']) / 1e3:.1f} | {int(s.get('swap_time_us', 0)) / 1e3:.3f} |")
EOF
        "$PT2CTL" --admin-address "$ADMIN_ADDR" --token-file "$WORK/token" weights free-inactive "$BIG_MODEL" \
          > /dev/null || true
      else
        out "pt2ctl push failed: $(tail -n 1 "$DATA/pt2ctl_push.err")"
      fi
      out ""
    fi
    out "Daemon VmRSS at the end: $(rss_mb "$DAEMON_PID") MB."
    out ""
    # The daemon logs each push: its time, the transfer to the device (device staging:
    # through pinned memory, overlapped with reading or receiving) and the copy into
    # the inactive buffer with its bandwidth and what it read.
    out "Each push above as the daemon logged it:"
    out ""
    grep -o "weights '[^']*' staged.*copy into the inactive buffer[^)]*)" "$DATA/upload.daemon.log" \
      | sed -E "s/^weights '([^']*)' staged from ([^ ]*) \((.*)\)$/- \1 (\2): \3/" \
      | tee -a "$RESULTS" || out "(none logged)"
    out ""
    stop_daemon
  fi
fi

# --------------------------------------------------------------- targets
out "## Targets"
out ""
record $REPORT targets "$DATA/pool_bench.md" "$INPROC" "$NATIVE" "$KSERVE" "$SWAPJSON" "$LOADSWAP" \
  "$FLOOR"
out ""
out "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
log "results written to $RESULTS (raw data in $DATA)"
