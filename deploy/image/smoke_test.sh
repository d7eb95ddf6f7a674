#!/usr/bin/env bash
# Runs the built image with runc and checks it end to end:
#   host network namespace (no bridge, no traffic off 127.0.0.1), read-only root filesystem with
#   a tmpfs /tmp, all capabilities dropped, no-new-privileges, UID 65532 from the image;
#   waits for grpc.health.v1 SERVING on 127.0.0.1, runs one KServe v2 inference on the demo
#   model and compares it with the exporter's reference output, sends SIGTERM and expects exit 0.
#   The demo package is loaded twice: `mlp` in the daemon and `mlp_worker` with
#   `isolation: process`, so pt2serve-worker must start, serve and restart inside the image:
#   the test checks that the worker runs as UID 65532 in the container, KILLs it from the host
#   and expects the daemon to restart it and `mlp_worker` to serve again.
#
# Usage: deploy/image/smoke_test.sh [--build-dir build] [OCI_LAYOUT:TAG]
#   (default image: what build.sh built last from that tree; the reference outputs come from the
#   tree's demo model export, so pass the --build-dir the image was built from.)
# Needs root, runc and umoci (Debian), and .venv (grpcio, tritonclient).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=build
[[ ${1:-} == --build-dir ]] && { BUILD=$2; shift 2; }
BUILD=$(realpath "$BUILD")
IMAGE=${1:-$BUILD/image/oci:$(sed -n 's/.*kVersion\[\] = "\(.*\)";/\1/p' server/version.h)}
WORK=$(mktemp -d /tmp/pt2serve-smoke.XXXXXX)
ID=pt2serve-smoke-$$
PY=$ROOT/.venv/bin/python
source deploy/image/build_tree.sh
build_tree_vars "$BUILD" "$ROOT" || exit 2
log() { echo "[smoke] $*" >&2; }
RUNC_PID=
cleanup() {
  runc kill "$ID" KILL 2>/dev/null || true
  [[ -n $RUNC_PID ]] && wait "$RUNC_PID" 2>/dev/null || true
  runc delete --force "$ID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
START=$(date +%s.%N)

umoci unpack --image "$IMAGE" "$WORK/bundle" >/dev/null
read -r PORT MPORT < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
mkdir -p "$WORK/etc"
cat > "$WORK/etc/config.yaml" <<YAML
server:
  inference_address: "127.0.0.1:$PORT"
  metrics_address: "127.0.0.1:$MPORT"
  admin_address: ""
  drain_delay_ms: 500
  drain_timeout_ms: 5000
models:
  - name: mlp
    path: /usr/share/pt2serve/models/mlp.pt2
  - name: mlp_worker
    path: /usr/share/pt2serve/models/mlp.pt2
    isolation: process
YAML
# The runtime spec umoci derived from the image config, hardened and on the host network.
"$PY" - "$WORK/bundle/config.json" "$WORK/etc" <<'PYEOF'
import json, sys
path, etc = sys.argv[1], sys.argv[2]
spec = json.load(open(path))
spec["root"]["readonly"] = True
spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/tmp"]
spec["mounts"] += [
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "nodev", "mode=1777", "size=1g"]},
    {"destination": "/etc/pt2serve", "type": "bind", "source": etc, "options": ["rbind", "ro"]},
]
p = spec["process"]
p["terminal"] = False
p["noNewPrivileges"] = True
p["capabilities"] = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
assert p["user"]["uid"] == 65532 and p["user"]["gid"] == 65532, p["user"]
assert p["args"] == ["/usr/bin/pt2serve", "--config", "/etc/pt2serve/config.yaml"], p["args"]
json.dump(spec, open(path, "w"), indent=1)
PYEOF

log "runc run $ID (127.0.0.1:$PORT)"
runc run --bundle "$WORK/bundle" "$ID" < /dev/null > "$WORK/stdout.log" 2> "$WORK/stderr.log" &
RUNC_PID=$!

"$PY" - "$PORT" "$MODEL_DIR/mlp.reference.safetensors" "$ID" <<'PYEOF' || { log "FAILED; container stderr:"; tail -n 40 "$WORK/stderr.log" >&2; exit 1; }
import json, os, signal, subprocess, sys, time
import grpc, numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
import tritonclient.grpc as tc
from safetensors.numpy import load_file
port, ref_path, container = sys.argv[1:4]
url = f"127.0.0.1:{port}"
SERVING = health_pb2.HealthCheckResponse.SERVING

def wait_serving(service: str, budget_s: float) -> float:
    start = time.monotonic()
    status = None
    while time.monotonic() - start < budget_s:
        try:
            with grpc.insecure_channel(url) as ch:
                status = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1).status
            if status == SERVING:
                return time.monotonic() - start
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"health '{service}' not SERVING after {budget_s} s ({status})")

def infer_and_check(client, model: str) -> str:
    x = tc.InferInput("x", list(ref["input.x"].shape), "FP32")
    x.set_data_from_numpy(ref["input.x"])
    r = client.infer(model, [x])
    np.testing.assert_allclose(r.as_numpy("y"), ref["output.y"], rtol=1e-4, atol=1e-5)
    return r.get_response().parameters["weights_version"].string_param

def workers() -> dict[int, int]:
    """pid -> real UID of every pt2serve-worker process in the container."""
    pids = json.loads(subprocess.run(["runc", "ps", "--format", "json", container], check=True,
                                     capture_output=True, text=True).stdout or "[]")
    found = {}
    for pid in pids:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            uid = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("Uid:"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        if os.path.basename(exe) == "pt2serve-worker":
            found[pid] = uid
    return found

print(f"[smoke] grpc.health.v1 SERVING after {wait_serving('', 60):.1f} s", file=sys.stderr)
ref = load_file(ref_path)
c = tc.InferenceServerClient(url)
for model in ("mlp", "mlp_worker"):
    version = infer_and_check(c, model)
    print(f"[smoke] KServe inference on {model} matches the reference (weights '{version}')",
          file=sys.stderr)
before = workers()
assert len(before) == 1, f"expected one pt2serve-worker in the container, found {before}"
(pid, uid), = before.items()
assert uid == 65532, f"pt2serve-worker runs as UID {uid}, not 65532"
os.kill(pid, signal.SIGKILL)
killed = time.monotonic()
after = {}
while time.monotonic() - killed < 30 and not (after and pid not in after):
    time.sleep(0.1)
    after = workers()
assert len(after) == 1 and pid not in after, f"worker not replaced: before {before}, after {after}"
wait_serving("mlp_worker", 30)
infer_and_check(c, "mlp_worker")
print(f"[smoke] pt2serve-worker (UID {uid}) killed; restarted (pid {pid} -> {next(iter(after))}), "
      f"mlp_worker SERVING again after {time.monotonic() - killed:.1f} s and matches the reference",
      file=sys.stderr)
PYEOF

runc kill "$ID" TERM
set +e
wait "$RUNC_PID"
CODE=$?
set -e
RUNC_PID=
if [[ $CODE -ne 0 ]]; then
  log "FAILED: exit code $CODE after SIGTERM"; tail -n 20 "$WORK/stderr.log" >&2; exit 1
fi
grep -q "shutdown complete" "$WORK/stderr.log" || { log "FAILED: no 'shutdown complete' in the log"; exit 1; }
printf '[smoke] SIGTERM -> exit 0 (drained); smoke test passed in %.1f s\n' \
  "$(echo "$(date +%s.%N) - $START" | bc)" >&2
