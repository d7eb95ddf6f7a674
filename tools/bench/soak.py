#!/usr/bin/env python3
"""Hot-swap soak: thousands of `pt2ctl weights push --swap` cycles under oversubscribed load.

For each model (one after the other, all served by ONE real pt2serve daemon that this script
starts), CLIENTS threads call Inference.Run continuously (more clients than the model's runners,
so requests queue) while the main thread runs CYCLES cycles of

    pt2ctl weights push MODEL {real|zero}.safetensors --version {real|zero}-<cycle> --swap

alternating a real weight set (the zoo model's seed-SEED weights) and an all-zero one. Every
response is checked against the eager output of the weights version it names ("initial": the
package's own weights; "real-N" / "zero-N": the set pushed in cycle N), and each client thread
must never see an older cycle after a newer one. Counted: ok, failed (RPC errors), mixed (an
output that does not match the version it names, or an unknown version), regressions (a client
went back to an older cycle). Swap latency: the server's swap_time_us (requests paused) and the
wall time of each pt2ctl push+swap. After the cycles: free-inactive, then the buffer status,
/metrics (pt2serve_weights_version_info) and the daemon's RSS growth are checked and reported.

Expected outputs come from the eager nn.Module of the zoo (tools/export/model_zoo.py) on the
CPU, so a CUDA package is compared with --rtol/--atol (defaults looser with --device cuda).

    # CPU, the zoo (exported and cached by tools/export/export_model.py zoo when --model-dir
    # is not given), 1,000 cycles per model:
    .venv/bin/python tools/bench/soak.py --cycles 1000
    # CUDA host: the CUDA zoo, e.g. ~/.cache/pt2serve/models/<key>-cuda
    .venv/bin/python tools/bench/soak.py --cycles 1000 --device cuda \\
        --model-dir "$(.venv/bin/python tools/export/export_model.py zoo --device cuda | tail -1)"

Exit status 0 only if every cycle succeeded and no response failed, mixed or regressed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "export"))
TOKEN = "soak-admin-token-0123456789"
DEFAULT_MODELS = ("mlp", "cnn", "two_io", "tiny_lm", "checked", "half")


def parse_args(argv=None) -> argparse.Namespace:
    build = Path(os.environ.get("PT2SERVE_BUILD_DIR") or REPO / "build")
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=1000, help="push+swap cycles per model")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated zoo models (those missing from --model-dir are "
                        "skipped with a note)")
    p.add_argument("--clients", type=int, default=8, help="client threads per model")
    p.add_argument("--runners", type=int, default=2, help="runners per model")
    p.add_argument("--model-dir", help="zoo packages (NAME.pt2, NAME.reference.safetensors); "
                                       "default: export_model.py zoo")
    p.add_argument("--device", default="auto", help="model device in the daemon config")
    p.add_argument("--isolation", default="in_process", choices=("in_process", "process"))
    p.add_argument("--seed", type=int, default=11, help="seed of the real weight set")
    p.add_argument("--daemon", default=str(build / "server" / "pt2serve"))
    p.add_argument("--pt2ctl", default=str(build / "tools" / "pt2ctl" / "pt2ctl"))
    p.add_argument("--rtol", type=float, help="default 1e-4 (cpu), 1e-3 (other devices)")
    p.add_argument("--atol", type=float, help="default 1e-5 (cpu), 1e-3 (other devices)")
    p.add_argument("--no-metrics", action="store_true",
                   help="run the daemon without /metrics and skip its check (hosts where the "
                        "metrics endpoint cannot start, or without prometheus_client)")
    p.add_argument("--json", help="also write the summary here")
    p.add_argument("--work-dir", help="weights, config and daemon logs (default: a temp dir)")
    args = p.parse_args(argv)
    cpu = args.device in ("cpu", "auto") and "cuda" not in str(args.model_dir or "")
    args.rtol = args.rtol if args.rtol is not None else (1e-4 if cpu else 1e-3)
    args.atol = args.atol if args.atol is not None else (1e-5 if cpu else 1e-3)
    return args


# ------------------------------------------------------------------------------ set-up


def zoo_dir(args) -> Path:
    if args.model_dir:
        return Path(args.model_dir)
    out = subprocess.run([sys.executable, str(REPO / "tools/export/export_model.py"), "zoo"],
                         check=True, capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def stubs(work: Path):
    """pt2serve.v1 inference stubs, generated with grpc_tools into `work`."""
    import grpc_tools
    from grpc_tools import protoc

    out = work / "stubs"
    out.mkdir(exist_ok=True)
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"-I{wkt}", f"--python_out={out}",
                      f"--grpc_python_out={out}", "pt2serve/v1/inference.proto"])
    if rc != 0:
        raise SystemExit("protoc failed on proto/pt2serve/v1/inference.proto")
    sys.path.insert(0, str(out))
    return (importlib.import_module("pt2serve.v1.inference_pb2"),
            importlib.import_module("pt2serve.v1.inference_pb2_grpc"))


@dataclass
class WeightSets:
    """Files to push and the outputs expected for each kind of version."""

    files: dict[str, Path]                    # "real" / "zero" -> safetensors
    inputs: dict[str, np.ndarray]             # reference request
    expected: dict[str, dict[str, np.ndarray]]  # "initial" / "real" / "zero" -> outputs


def weight_sets(model: str, model_dir: Path, seed: int, work: Path) -> WeightSets:
    """The real set (seed `seed`) and the all-zero set of the package's updatable constants,
    with eager outputs of the zoo module for the reference input."""
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    import export_model as ex
    from model_zoo import ZOO

    m = ZOO[model]
    module = m.build(seed)
    ep = ex.export_program(module, m.example_inputs(), list(m.inputs), m.max_batch)
    real = ex.constant_tensors(module, ex.constant_fqns(ep))
    zero = {k: torch.zeros_like(v) for k, v in real.items()}
    files = {"real": work / f"{model}.real.safetensors", "zero": work / f"{model}.zero.safetensors"}
    save_file(real, str(files["real"]))
    save_file(zero, str(files["zero"]))

    package_ref = load_file(str(model_dir / f"{model}.reference.safetensors"))
    inputs = {k[6:]: v for k, v in package_ref.items() if k.startswith("input.")}
    ordered = tuple(torch.from_numpy(inputs[s.name]) for s in m.inputs)
    expected = {"initial": {k[7:]: v for k, v in package_ref.items() if k.startswith("output.")}}
    for kind, tensors in (("real", real), ("zero", zero)):
        mod = m.build(seed)
        state = mod.state_dict()
        state.update({k: v.clone() for k, v in tensors.items()})
        mod.load_state_dict(state)
        outs = ex.eager(mod, ordered)
        expected[kind] = {n: o.numpy() for n, o in zip(m.outputs, outs)}
    for a, b in (("initial", "real"), ("initial", "zero"), ("real", "zero")):
        if all(np.allclose(expected[a][n], expected[b][n]) for n in expected[a]):
            raise SystemExit(f"{model}: the '{a}' and '{b}' outputs are equal; the soak could "
                             "not tell those weights apart")
    return WeightSets(files, inputs, expected)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Daemon:
    proc: subprocess.Popen
    url: str
    admin_url: str
    metrics_url: str
    token_file: Path
    log: Path


def start_daemon(args, models: list[str], model_dir: Path, work: Path, ip, ipg) -> Daemon:
    import grpc

    token_file = work / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    ports = [free_port() for _ in range(3)]
    config = {
        "server": {"inference_address": f"127.0.0.1:{ports[0]}",
                   "admin_address": f"127.0.0.1:{ports[1]}",
                   "metrics_address": "" if args.no_metrics else f"127.0.0.1:{ports[2]}",
                   "model_repository": "", "admin_auth": {"token_file": str(token_file)}},
        "models": [{"name": m, "path": str(model_dir / f"{m}.pt2"), "num_runners": args.runners,
                    "max_queue_size": max(64, 2 * args.clients), "device": args.device,
                    "isolation": args.isolation} for m in models],
    }
    (work / "pt2serve.yaml").write_text(json.dumps(config, indent=2))
    log = work / "pt2serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([args.daemon, "--config", str(work / "pt2serve.yaml")],
                                stdout=err, stderr=err, stdin=subprocess.DEVNULL)
    d = Daemon(proc, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}",
               f"http://127.0.0.1:{ports[2]}/metrics", token_file, log)
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(d.url) as ch:
        stub = ipg.InferenceStub(ch)
        for m in models:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"pt2serve exited ({proc.returncode}):\n"
                                     f"{log.read_text()[-3000:]}")
                try:
                    if stub.GetModel(ip.GetModelRequest(name=m), timeout=2).state == ip.READY:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    proc.kill()
                    raise SystemExit(f"model {m} not READY within 120 s:\n"
                                     f"{log.read_text()[-3000:]}")
                time.sleep(0.05)
    return d


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pt2ctl(args, d: Daemon, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([args.pt2ctl, "--admin-address", d.admin_url, "--token-file",
                           str(d.token_file), "--json", *cmd],
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------- load


NP_DTYPES = {np.dtype(np.float32): "DT_FLOAT32", np.dtype(np.float16): "DT_FLOAT16",
             np.dtype(np.int64): "DT_INT64", np.dtype(np.int32): "DT_INT32",
             np.dtype(np.float64): "DT_FLOAT64", np.dtype(np.uint8): "DT_UINT8",
             np.dtype(np.bool_): "DT_BOOL"}


def cycle_of(version: str) -> int:
    return -1 if version == "initial" else int(version.split("-", 1)[1])


class Load:
    """`clients` threads calling Inference.Run on one model until stop(); every response is
    checked against the expected outputs of the weights version it names."""

    def __init__(self, d: Daemon, ip, ipg, model: str, sets: WeightSets, clients: int,
                 rtol: float, atol: float):
        self._stub_mod, self._model, self._sets = ipg, model, sets
        self._rtol, self._atol = rtol, atol
        self._request = ip.RunRequest(model=model, inputs=[
            ip.Tensor(name=n, dtype=getattr(ip, NP_DTYPES[a.dtype]), shape=list(a.shape),
                      data=np.ascontiguousarray(a).tobytes()) for n, a in sets.inputs.items()])
        self._url = d.url
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = self.failed = self.mixed = self.regressions = 0
        self.examples: list[str] = []
        self.cycles_seen: set[int] = set()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _problem(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    def _matches(self, resp, kind: str) -> bool:
        want = self._sets.expected[kind]
        got = {o.name: o for o in resp.outputs}
        if set(got) != set(want):
            return False
        for name, w in want.items():
            y = np.frombuffer(got[name].data, w.dtype).reshape(tuple(got[name].shape))
            if y.shape != w.shape:
                return False
            if w.dtype == np.float16:
                if not np.allclose(y.astype(np.float32), w.astype(np.float32), rtol=1e-2,
                                   atol=1e-2):
                    return False
            elif not np.allclose(y, w, rtol=self._rtol, atol=self._atol):
                return False
        return True

    def _client(self) -> None:
        import grpc

        ok = failed = mixed = back = 0
        seen: set[int] = set()
        last = -2
        with grpc.insecure_channel(self._url) as ch:
            stub = self._stub_mod.InferenceStub(ch)
            while not self._stop.is_set():
                try:
                    resp = stub.Run(self._request, timeout=60)
                except grpc.RpcError as e:
                    failed += 1
                    with self._lock:
                        self._problem(f"failed: {e.code()}: {e.details()}")
                    continue
                v = resp.weights_version
                kind = "initial" if v == "initial" else v.split("-", 1)[0]
                if kind not in self._sets.expected or not re.fullmatch(
                        r"initial|(real|zero)-\d+", v):
                    mixed += 1
                    with self._lock:
                        self._problem(f"unknown weights_version '{v}'")
                    continue
                if not self._matches(resp, kind):
                    mixed += 1
                    with self._lock:
                        self._problem(f"output does not match weights '{v}'")
                    continue
                c = cycle_of(v)
                if c < last:
                    back += 1
                    with self._lock:
                        self._problem(f"went back from cycle {last} to {c}")
                last = max(last, c)
                seen.add(c)
                ok += 1
        with self._lock:
            self.ok += ok
            self.failed += failed
            self.mixed += mixed
            self.regressions += back
            self.cycles_seen |= seen

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def metric_versions(d: Daemon, model: str) -> list[str]:
    """The versions /metrics reports as active for `model` (pt2serve_weights_version_info)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(d.metrics_url, timeout=10).read().decode()
    return [s.labels["version"] for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "pt2serve_weights_version_info"
            and s.labels.get("model") == model and s.value == 1]


def soak_model(args, d: Daemon, ip, ipg, model: str, sets: WeightSets) -> dict:
    load = Load(d, ip, ipg, model, sets, args.clients, args.rtol, args.atol)
    swap_us: list[float] = []
    cycle_ms: list[float] = []
    cycle_errors: list[str] = []
    time.sleep(0.3)  # every client running
    rss0 = rss_kb(d.proc.pid)
    start = time.monotonic()
    try:
        for i in range(args.cycles):
            kind = ("real", "zero")[i % 2]
            label = f"{kind}-{i}"
            t = time.monotonic()
            p = pt2ctl(args, d, "weights", "push", model, str(sets.files[kind]), "--version",
                       label, "--swap")
            cycle_ms.append((time.monotonic() - t) * 1e3)
            if p.returncode != 0:
                cycle_errors.append(f"cycle {i}: pt2ctl exit {p.returncode}: "
                                    f"{p.stderr.strip()[-300:]}")
                continue
            swap = json.loads(p.stdout)["swap"]
            if swap.get("active_version") != label:
                cycle_errors.append(f"cycle {i}: active {swap.get('active_version')}")
            swap_us.append(float(swap.get("swap_time_us", 0)))
    finally:
        elapsed = time.monotonic() - start
        load.stop()
    rss1 = rss_kb(d.proc.pid)
    freed = pt2ctl(args, d, "weights", "free-inactive", model)
    status = pt2ctl(args, d, "weights", "status", model)
    last = f"{('real', 'zero')[(args.cycles - 1) % 2]}-{args.cycles - 1}"
    checks: list[str] = []
    if freed.returncode != 0:
        checks.append(f"free-inactive failed: {freed.stderr.strip()}")
    if status.returncode == 0:
        st = json.loads(status.stdout)
        if args.cycles and (st["active"]["version"] != last
                            or st["inactive"]["state"] != "EMPTY"):
            checks.append(f"status after the soak and free-inactive: {status.stdout[:400]}")
    else:
        checks.append(f"status failed: {status.stderr.strip()}")
    if args.cycles and not args.no_metrics and metric_versions(d, model) != [last]:
        checks.append(f"/metrics weights_version_info for {model}: "
                      f"{metric_versions(d, model)}, expected ['{last}']")
    unseen = args.cycles - len([c for c in load.cycles_seen if c >= 0])
    return {
        "model": model, "cycles": args.cycles, "clients": args.clients, "runners": args.runners,
        "seconds": round(elapsed, 1), "requests_ok": load.ok, "failed": load.failed,
        "mixed": load.mixed, "regressions": load.regressions,
        "cycles_never_served": unseen, "cycle_errors": len(cycle_errors),
        "swap_us_p50": round(pct(swap_us, 50), 1), "swap_us_p99": round(pct(swap_us, 99), 1),
        "swap_us_max": round(max(swap_us), 1) if swap_us else None,
        "push_swap_ms_p50": round(pct(cycle_ms, 50), 1),
        "push_swap_ms_p99": round(pct(cycle_ms, 99), 1),
        "rss_growth_mb": round((rss1 - rss0) / 1024, 1),
        "checks_failed": checks, "examples": load.examples + cycle_errors[:5],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    model_dir = zoo_dir(args)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="pt2soak-"))
    work.mkdir(parents=True, exist_ok=True)
    models, skipped = [], []
    for m in args.models.split(","):
        (models if (model_dir / f"{m}.pt2").is_file() else skipped).append(m)
    if skipped:
        print(f"skipped (no package in {model_dir}): {', '.join(skipped)}", file=sys.stderr)
    if not models:
        raise SystemExit("no models to soak")
    ip, ipg = stubs(work)
    sets = {m: weight_sets(m, model_dir, args.seed, work) for m in models}
    d = start_daemon(args, models, model_dir, work, ip, ipg)
    results = []
    try:
        for m in models:
            r = soak_model(args, d, ip, ipg, m, sets[m])
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        d.proc.send_signal(signal.SIGTERM)
        try:
            code = d.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            code = "killed after 60 s"
    summary = {"device": args.device, "model_dir": str(model_dir), "isolation": args.isolation,
               "daemon_exit": code, "models": results}
    print(f"\n{'model':8} {'cycles':>6} {'ok':>8} {'failed':>6} {'mixed':>5} {'back':>4} "
          f"{'swap us p50/p99/max':>22} {'push+swap ms p50/p99':>21} {'RSS +MB':>7}")
    for r in results:
        print(f"{r['model']:8} {r['cycles']:6} {r['requests_ok']:8} {r['failed']:6} "
              f"{r['mixed']:5} {r['regressions']:4} "
              f"{r['swap_us_p50']:>8}/{r['swap_us_p99']}/{r['swap_us_max']:<6} "
              f"{r['push_swap_ms_p50']:>10}/{r['push_swap_ms_p99']:<9} {r['rss_growth_mb']:7}")
        for e in r["examples"] + r["checks_failed"]:
            print(f"    {e}")
    print(f"daemon exit after SIGTERM: {code}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    bad = code != 0 or any(r["failed"] or r["mixed"] or r["regressions"] or r["cycle_errors"]
                           or r["checks_failed"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
