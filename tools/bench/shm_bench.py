#!/usr/bin/env python3
"""System shared memory vs raw contents for a large tensor, through tritonclient.grpc.

Exports once (cached) a parameter-free AOTInductor package `y = x * 2` with x float32 [1, N],
N = --mib MiB worth of floats, starts the daemon on a free loopback port with
`--shared-memory system`, and times closed-loop ModelInfer calls in four modes:

  raw             input and output inside the gRPC messages (tritonclient's default)
  shm-in          input in a registered region, output raw
  shm-in-out      input and output in registered regions
  shm-in-place    as shm-in-out, without the client's copies into and out of the regions
                  (a producer that writes its data straight into shared memory)

The first three include every client-side copy (numpy -> message, numpy -> region,
region -> numpy), so they compare what a client whose data is not in shared memory yet sees.
Every mode's first result is checked against 2 * x; the timed calls then run in rounds of one
call per mode (noise from other processes hits every mode alike). Prints a Markdown table
(--json: one JSON object per mode as well).

  .venv/bin/python tools/bench/shm_bench.py [--mib 8] [--iters 40] [--daemon build/server/pt2serve]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def export_package(mib: int, cache: Path) -> Path:
    import torch

    n = mib * (1 << 20) // 4
    out = cache / "bench" / f"scale_{mib}mib-{torch.__version__}.pt2"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)

    class Scale(torch.nn.Module):
        def forward(self, x):
            return x * 2.0

    program = torch.export.export(Scale().eval(), (torch.zeros(1, n),))
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-scale-", dir=out.parent))
    try:
        pkg = tmp / out.name
        torch._inductor.aoti_compile_and_package(program, package_path=str(pkg))
        os.replace(pkg, out)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(daemon: Path, package: Path, log: Path):
    import tritonclient.grpc as grpcclient

    port = free_port()
    url = f"127.0.0.1:{port}"
    proc = subprocess.Popen([str(daemon), "--model", f"scale={package}", "--inference-address", url,
                             "--admin-address", "", "--metrics-address", "",
                             "--shared-memory", "system"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if client.is_server_ready():
                return proc, client
        except Exception:  # not listening yet
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("daemon not ready within 60 s")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=8, help="input (and output) size in MiB")
    ap.add_argument("--iters", type=int, default=40, help="timed calls per mode")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--daemon", type=Path,
                    default=Path(os.environ.get("PT2SERVE_BUILD_DIR") or REPO / "build")
                    / "server" / "pt2serve")
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("PT2SERVE_CACHE")
                                 or Path.home() / ".cache/pt2serve/models"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import tritonclient.grpc as grpcclient
    import tritonclient.utils.shared_memory as shm

    package = export_package(args.mib, args.cache.expanduser())
    log = Path(tempfile.mkstemp(prefix="shm_bench_", suffix=".log")[1])
    proc, client = start_daemon(args.daemon, package, log)
    handles = []
    try:
        meta = client.get_model_metadata("scale", as_json=True)
        in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
        shape = [int(d) for d in meta["inputs"][0]["shape"]]
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        want = x * 2
        nbytes = x.nbytes
        tag = uuid.uuid4().hex[:8]
        in_h = shm.create_shared_memory_region("bench_in", f"/pt2serve_bench_{tag}_in", nbytes)
        handles.append(in_h)
        out_h = shm.create_shared_memory_region("bench_out", f"/pt2serve_bench_{tag}_out", nbytes)
        handles.append(out_h)
        client.register_system_shared_memory("bench_in", f"/pt2serve_bench_{tag}_in", nbytes)
        client.register_system_shared_memory("bench_out", f"/pt2serve_bench_{tag}_out", nbytes)
        shm.set_shared_memory_region(in_h, [x])

        def raw_call():
            i = grpcclient.InferInput(in_name, shape, "FP32")
            i.set_data_from_numpy(x)
            return client.infer("scale", [i]).as_numpy(out_name)

        def shm_input(copy: bool):
            if copy:
                shm.set_shared_memory_region(in_h, [x])
            i = grpcclient.InferInput(in_name, shape, "FP32")
            i.set_shared_memory("bench_in", nbytes)
            return i

        def shm_in_call():
            return client.infer("scale", [shm_input(True)]).as_numpy(out_name)

        def shm_out_call(copy: bool):
            o = grpcclient.InferRequestedOutput(out_name)
            o.set_shared_memory("bench_out", nbytes)
            client.infer("scale", [shm_input(copy)], outputs=[o])
            y = shm.get_contents_as_numpy(out_h, np.float32, shape)
            return np.array(y) if copy else y

        modes = {"raw": raw_call, "shm-in": shm_in_call,
                 "shm-in-out": lambda: shm_out_call(True),
                 "shm-in-place": lambda: shm_out_call(False)}
        for mode, call in modes.items():
            np.testing.assert_allclose(call(), want, err_msg=mode)
            for _ in range(args.warmup):
                call()
        # Rounds of one call per mode, so load from other processes hits every mode alike.
        samples = {mode: [] for mode in modes}
        for _ in range(args.iters):
            for mode, call in modes.items():
                t0 = time.perf_counter()
                call()
                samples[mode].append(time.perf_counter() - t0)
        rows = []
        for mode, times in samples.items():
            times.sort()
            rows.append({"mode": mode, "mib": args.mib, "iters": args.iters,
                         "p50_ms": statistics.median(times) * 1e3,
                         "p90_ms": times[int(0.9 * (len(times) - 1))] * 1e3,
                         "mean_ms": statistics.fmean(times) * 1e3,
                         "calls_per_s": 1 / statistics.fmean(times)})
        base = rows[0]["p50_ms"]
        print(f"| mode ({args.mib} MiB in, {args.mib} MiB out) | p50 ms | p90 ms | calls/s | "
              f"p50 vs raw |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['mode']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                  f"{r['calls_per_s']:.1f} | {base / r['p50_ms']:.2f}x |")
        if args.json:
            for r in rows:
                print(json.dumps(r))
        client.unregister_system_shared_memory()
    finally:
        for h in handles:
            shm.destroy_shared_memory_region(h)
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
