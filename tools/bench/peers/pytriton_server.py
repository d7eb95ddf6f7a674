#!/usr/bin/env python3
"""The same .pt2 served by Triton's C++ front end through nvidia-pytriton (the peer to beat).

PyTriton starts the tritonserver binary its wheel ships; requests reach Triton's gRPC front end
and its scheduler (the dynamic batcher when on), then its Python proxy backend hands each batch
to the callable below in this process, which runs the package (loaded with
torch._inductor.aoti_load_package) on the whole batch. One model instance per `--runners`.

    pytriton_server.py --model mlp=/models/mlp.pt2 --grpc-port 8001 \
        [--batching on|off] [--max-batch-size 64] [--delay-us 0] [--runners 2] [--device cpu]

--batching off keeps max_batch_size (requests may still carry several rows) but has no dynamic
batcher, so each request is its own model call. Prints "listening on 127.0.0.1:PORT" once Triton
serves; stops on SIGTERM/SIGINT. Triton listens on 127.0.0.1 only (gRPC; HTTP and metrics on
the ports given, also on 127.0.0.1).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pt2_package import KSERVE_DTYPES, Pt2Package  # noqa: E402


def put_own_libpython_first() -> None:
    """Triton's Python backend stub links libpython3.X.so.1.0 and finds it through the loader's
    search path: with a pyenv/uv/venv interpreter that is the system's libpython of the same minor
    version (Debian bookworm: 3.11.2), whose C modules disagree with this interpreter's stdlib
    (pyenv's 3.11.7 multiprocessing.resource_tracker calls RLock._recursion_count, which 3.11.2's
    _thread lacks, and every model instance fails at start-up). PyTriton appends its own libs to LD_LIBRARY_PATH and
    hands the environment to tritonserver, so putting this interpreter's LIBDIR first is enough."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        old = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = libdir + (":" + old if old else "")


def make_infer_fn(pkg: Pt2Package):
    names = [t["name"] for t in pkg.inputs]
    out_names = [t["name"] for t in pkg.outputs]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        # `inputs` holds the whole batch Triton formed (rows of all its requests).
        outs = pkg.run([inputs[n] for n in names])
        return dict(zip(out_names, outs))

    return infer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="NAME=PATH of the .pt2 package")
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--batching", choices=("on", "off"), default="on")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--delay-us", type=int, default=0, help="max_queue_delay_microseconds")
    ap.add_argument("--runners", type=int, default=2, help="model instances (one package each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--intra-op-threads", type=int, default=1,
                    help="torch.set_num_threads here; PyTriton's handler threads follow "
                         "OMP_NUM_THREADS (run_peers.sh sets both)")
    args = ap.parse_args(argv)
    name, sep, path = args.model.partition("=")
    if not sep or not name or not path:
        ap.error("--model takes NAME=PATH")
    torch.set_num_threads(args.intra_op_threads)
    logging.basicConfig(level=logging.WARNING)

    put_own_libpython_first()
    pkg = Pt2Package(path, instances=args.runners, device=args.device)
    if any(not t["shape"] or t["shape"][0] != -1 for t in pkg.inputs + pkg.outputs):
        print(f"{path}: PyTriton's batching needs a dynamic dim 0 on every input and output", file=sys.stderr)
        return 2
    tensor = lambda t: Tensor(name=t["name"], dtype=KSERVE_DTYPES[t["dtype"]][1],  # noqa: E731
                              shape=tuple(t["shape"][1:]))
    batcher = DynamicBatcher(max_queue_delay_microseconds=args.delay_us) if args.batching == "on" else None
    config = ModelConfig(max_batch_size=min(args.max_batch_size, pkg.max_batch_size or args.max_batch_size),
                         batcher=batcher)
    triton_config = TritonConfig(grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                                 http_address="127.0.0.1", http_port=args.http_port,
                                 metrics_address="127.0.0.1", metrics_port=args.metrics_port,
                                 allow_metrics=False, exit_on_error=True)
    # PyTriton guards statistics behind an access token by default; perf_analyzer reads them
    # (server-side breakdown), so that one endpoint is open (the server listens on 127.0.0.1).
    security = TritonSecurityConfig(
        restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
    with Triton(config=triton_config, security_config=security) as triton:
        # One callable per instance: each takes a package container of its own from the pool.
        triton.bind(model_name=name, infer_func=[make_infer_fn(pkg) for _ in range(pkg.instances)],
                    inputs=[tensor(t) for t in pkg.inputs], outputs=[tensor(t) for t in pkg.outputs],
                    config=config, strict=False)
        triton.run()
        print(f"listening on 127.0.0.1:{args.grpc_port} (model {name}: {path}, batching {args.batching}, "
              f"max_batch_size {config.max_batch_size}, delay {args.delay_us} us, "
              f"{pkg.instances} instances, device {args.device})", flush=True)
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        while not done.wait(1.0):
            if not triton.is_alive():
                print("tritonserver or its proxy backend died", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
