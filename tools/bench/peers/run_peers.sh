#!/usr/bin/env bash
# pt2serve next to its peers: same machine, same .pt2, same client (perf_analyzer, gRPC,
# batch-1 requests, closed loop at each concurrency, fixed windows). Servers, one at a time, each
# on 127.0.0.1 and stopped by its PID:
#   pt2serve            no batching
#   pt2serve batch d=0  dynamic batching, max_batch_size B, max_queue_delay_us 0
#   pt2serve batch d=D  the same with a small delay D
#   grpcio              tools/bench/peers/kserve_grpcio_server.py (Python, thread pool, no batching)
#   pytriton batch      Triton (nvidia-pytriton) with its dynamic batcher (max_batch_size B, delay 0)
#   pytriton            Triton without a dynamic batcher
# then the pt2serve rows once more (marked "(repeat)") to show the host's noise. Each server is
# first checked against eager PyTorch (check_outputs.py); a server that fails it is not measured.
#
#   tools/bench/peers/run_peers.sh [options]
#     --out FILE.md           results (default peers-results.md; FILE.json and FILE.data/ beside it)
#     --pt2serve PATH         daemon binary (default $PT2SERVE_BIN, else <repo>/build/server/pt2serve)
#     --model-dir DIR         exported zoo (default $PT2SERVE_MODEL_DIR)
#     --models LIST           default mlp,cnn
#     --device D              cpu (default) or cuda[:N]: the device the packages were exported for
#     --concurrency LIST      default 1,4,16,64
#     --window-ms N           perf_analyzer measurement window (default 1000; 3 windows per level)
#     --runners N             model instances on every server (default 2)
#     --cpu-threads N         intra-op (OpenMP) threads per model call on every server (default 1):
#                             pt2serve cpu_threads=N, the peers OMP_NUM_THREADS=N (CPU packages)
#     --batch N               max_batch_size of the batching rows (default 64)
#     --delay-us N            the small delay of the second pt2serve batching row (default 100)
#     --perf-analyzer PATH    default $PERF_ANALYZER, else <repo>/.venv/bin/perf_analyzer, else PATH
#     --peers-python PATH     interpreter with torch + nvidia-pytriton (default: the venv that
#                             setup_peers.sh creates or reuses; $PEERS_PYTHON)
#     --skip-pytriton, --skip-grpcio, --no-repeat
# Takes about 7 minutes with the defaults (2 models).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)

OUT=peers-results.md
PT2SERVE=${PT2SERVE_BIN:-$REPO/build/server/pt2serve}
MODEL_DIR=${PT2SERVE_MODEL_DIR:-}
MODELS=mlp,cnn
DEVICE=cpu
CONCURRENCY=1,4,16,64
WINDOW_MS=1000
RUNNERS=2
CPU_THREADS=1
BATCH=64
DELAY_US=100
PA=${PERF_ANALYZER:-}
PEERS_PY=${PEERS_PYTHON:-}
SKIP_PYTRITON=0 SKIP_GRPCIO=0 REPEAT=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --pt2serve) PT2SERVE=$2; shift 2 ;;
    --model-dir) MODEL_DIR=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --window-ms) WINDOW_MS=$2; shift 2 ;;
    --runners) RUNNERS=$2; shift 2 ;;
    --cpu-threads) CPU_THREADS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --delay-us) DELAY_US=$2; shift 2 ;;
    --perf-analyzer) PA=$2; shift 2 ;;
    --peers-python) PEERS_PY=$2; shift 2 ;;
    --skip-pytriton) SKIP_PYTRITON=1; shift ;;
    --skip-grpcio) SKIP_GRPCIO=1; shift ;;
    --no-repeat) REPEAT=0; shift ;;
    -h|--help) usage ;;
    *) echo "run_peers.sh: unknown option $1" >&2; usage 2 ;;
  esac
done
die() { echo "run_peers.sh: $*" >&2; exit 2; }
[[ -x $PT2SERVE ]] || die "no pt2serve binary at $PT2SERVE (--pt2serve PATH or PT2SERVE_BIN)"
[[ -n $MODEL_DIR && -d $MODEL_DIR ]] || die "no model dir (--model-dir DIR or PT2SERVE_MODEL_DIR)"
if [[ -z $PA ]]; then
  for cand in "$REPO/.venv/bin/perf_analyzer" "$(command -v perf_analyzer || true)"; do
    [[ -n $cand && -x $cand ]] && { PA=$cand; break; }
  done
fi
[[ -n $PA && -x $PA ]] || die "no perf_analyzer (--perf-analyzer PATH; scripts/get_perf_analyzer.sh installs one)"
if [[ -z $PEERS_PY ]]; then
  PEERS_PY=$("$HERE/setup_peers.sh")/bin/python || die "setup_peers.sh failed"
fi
"$PEERS_PY" -c 'import torch, tritonclient.grpc, safetensors' || die "$PEERS_PY lacks torch/tritonclient/safetensors"
IFS=, read -ra models <<< "$MODELS"
IFS=, read -ra levels <<< "$CONCURRENCY"
for m in "${models[@]}"; do [[ -f $MODEL_DIR/$m.pt2 ]] || die "no $MODEL_DIR/$m.pt2"; done

DATA=${OUT%.md}.data
JSON=${OUT%.md}.json
rm -rf "$DATA"; mkdir -p "$DATA/runs" "$DATA/logs"
REPORT=("$PEERS_PY" "$HERE/peers_report.py")
log() { printf '[%s] %s\n' "$(date -u +%T)" "$*" >&2; }
free_port() { "$PEERS_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

SERVER_PID=""
stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local i
  for i in $(seq 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true   # still there after 15 s
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT

# start_server LOG CMD...: runs CMD in the background, waits for "listening" in LOG.
start_server() {
  local logf=$1; shift
  "$@" > "$logf" 2>&1 &
  SERVER_PID=$!
  local i
  for i in $(seq 1200); do
    grep -q "listening" "$logf" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "server did not come up: $(grep -v '^\s*$' "$logf" | tail -n 2)"
  stop_server
  return 1
}

# measure MODEL SERVER LABEL ADDRESS: the correctness check, then perf_analyzer per level.
measure() {
  local model=$1 server=$2 label=$3 addr=$4 tag=$1.${3// /_}
  if ! "$PEERS_PY" "$HERE/check_outputs.py" --address "$addr" --model "$model" --model-dir "$MODEL_DIR" \
       > "$DATA/logs/$tag.check.log" 2>&1; then
    log "$label ($model) does not match eager: $(tail -n 2 "$DATA/logs/$tag.check.log")"
    for c in "${levels[@]}"; do
      echo "check_outputs failed: $(grep -m1 FAIL "$DATA/logs/$tag.check.log" || tail -n 1 "$DATA/logs/$tag.check.log")" \
        > "$DATA/runs/$model.${label// /_}.c$c.log"
      "${REPORT[@]}" row "$DATA" "$model" "$server" "$label" "$c"
    done
    return 0
  fi
  local c
  for c in "${levels[@]}"; do
    local base=$DATA/runs/$model.${label// /_}.c$c
    # -s 1000: every window counts as stable, so each level is exactly 3 windows (-r 3).
    timeout 120 "$PA" -m "$model" -i grpc -u "$addr" -b 1 --shape "$(shape_arg "$model")" \
      --concurrency-range "$c:$c" --measurement-interval "$WINDOW_MS" -s 1000 -r 3 \
      -f "$base.csv" > "$base.log" 2>&1 || log "$label $model c=$c: perf_analyzer failed: $(tail -n 1 "$base.log")"
    "${REPORT[@]}" row "$DATA" "$model" "$server" "$label" "$c"
    tail -n 1 "$DATA/rows.jsonl" >&2
  done
}

# perf_analyzer --shape for every input: NAME:dims without the batch dim, from the signature.
shape_arg() {
  "$PEERS_PY" - "$MODEL_DIR/$1.signature.json" <<'PY'
import json, sys
sig = json.load(open(sys.argv[1]))
print(" ".join(f"{t['name']}:" + ",".join(str(d) for d in t["shape"][1:]) for t in sig["inputs"]))
PY
}

pt2serve_rows() { # MODEL SUFFIX
  local model=$1 suffix=$2 port opts label
  for variant in nobatch batch0 batchd; do
    case $variant in
      nobatch) opts="runners=$RUNNERS,queue=1024"; label="pt2serve" ;;
      batch0) opts="runners=$RUNNERS,queue=1024,batch=$BATCH,batch_delay_us=0"; label="pt2serve batch$BATCH d=0" ;;
      batchd) opts="runners=$RUNNERS,queue=1024,batch=$BATCH,batch_delay_us=$DELAY_US"; label="pt2serve batch$BATCH d=$DELAY_US" ;;
    esac
    if [[ $DEVICE == cpu ]]; then opts="$opts,cpu_threads=$CPU_THREADS"; else opts="$opts,device=$DEVICE"; fi
    label="$label$suffix"
    port=$(free_port)
    log "$model: $label"
    start_server "$DATA/logs/$model.${label// /_}.server.log" "$PT2SERVE" -m "$model=$MODEL_DIR/$model.pt2:$opts" \
      --inference-address "127.0.0.1:$port" --admin-address '' --metrics-address '' || continue
    measure "$model" pt2serve "$label" "127.0.0.1:$port"
    stop_server
  done
}

cat > "$DATA/meta.json" <<JSON
{"date": "$(date -u '+%Y-%m-%d %H:%M UTC')", "host": "$(hostname)", "cpus": $(nproc),
 "cpu": "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)",
 "gpu": "$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true) | head -n1)",
 "device": "$DEVICE", "models": "$MODELS", "concurrency": "$CONCURRENCY", "window_ms": $WINDOW_MS,
 "runners": $RUNNERS, "cpu_threads": $CPU_THREADS, "batch": $BATCH, "delay_us": $DELAY_US, "load_start": "$(cut -d' ' -f1-3 /proc/loadavg)",
 "pt2serve": "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')",
 "torch": "$("$PEERS_PY" -c 'import torch; print(torch.__version__)')"}
JSON
log "results: $OUT, $JSON, raw runs in $DATA"

for model in "${models[@]}"; do
  pt2serve_rows "$model" ""
  if [[ $SKIP_GRPCIO == 0 ]]; then
    port=$(free_port)
    log "$model: grpcio"
    if start_server "$DATA/logs/$model.grpcio.server.log" env OMP_NUM_THREADS="$CPU_THREADS" "$PEERS_PY" "$HERE/kserve_grpcio_server.py" \
         --model "$model=$MODEL_DIR/$model.pt2" --address "127.0.0.1:$port" --runners "$RUNNERS" \
         --device "$DEVICE" --threads 64 --intra-op-threads "$CPU_THREADS"; then
      measure "$model" grpcio "grpcio" "127.0.0.1:$port"
      stop_server
    fi
  fi
  if [[ $SKIP_PYTRITON == 0 ]]; then
    for batching in on off; do
      label=$([[ $batching == on ]] && echo "pytriton batch$BATCH d=0" || echo "pytriton")
      gp=$(free_port) hp=$(free_port) mp=$(free_port)
      log "$model: $label"
      if start_server "$DATA/logs/$model.${label// /_}.server.log" env OMP_NUM_THREADS="$CPU_THREADS" "$PEERS_PY" "$HERE/pytriton_server.py" \
           --model "$model=$MODEL_DIR/$model.pt2" --grpc-port "$gp" --http-port "$hp" --metrics-port "$mp" \
           --batching "$batching" --max-batch-size "$BATCH" --runners "$RUNNERS" --device "$DEVICE" \
           --intra-op-threads "$CPU_THREADS"; then
        measure "$model" pytriton "$label" "127.0.0.1:$gp"
        stop_server
      fi
    done
  fi
done
if [[ $REPEAT == 1 ]]; then
  for model in "${models[@]}"; do pt2serve_rows "$model" " (repeat)"; done
fi

sed -i "s/\"load_start\"/\"load_end\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"load_start\"/" "$DATA/meta.json"
{
  echo "# pt2serve vs peers (perf_analyzer, gRPC, batch-1 requests)"
  echo
  "$PEERS_PY" -c 'import json,sys; m=json.load(open(sys.argv[1])); print("\n".join(f"- {k}: {v}" for k,v in m.items()))' "$DATA/meta.json"
  echo
  "${REPORT[@]}" table "$DATA" "$DATA/table.md" "$JSON" > /dev/null
  cat "$DATA/table.md"
} > "$OUT"
cat "$OUT"
