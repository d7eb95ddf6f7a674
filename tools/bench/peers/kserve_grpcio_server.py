#!/usr/bin/env python3
"""Minimal KServe v2 gRPC server in Python (grpcio) serving one .pt2: the peer baseline.

What a user would write in an afternoon: grpcio's synchronous server on a thread pool, the
package loaded with torch._inductor.aoti_load_package, one request = one model call (no
batching). The message classes and service stubs are generated at start-up from the project's
proto/kserve/*.proto with grpc_tools (into a temporary directory), so no wire code is written by
hand. RPCs: ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata, ModelConfig,
ModelStatistics (counts and times, as perf_analyzer reads them) and ModelInfer (raw or typed
contents in, raw contents out). Anything else answers UNIMPLEMENTED (grpcio's default).

    kserve_grpcio_server.py --model mlp=/models/mlp.pt2 --address 127.0.0.1:8001 \
        [--threads 16] [--runners 2] [--device cpu|cuda[:N]]

Prints "listening on ADDRESS" once it serves; stops on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pt2_package import KSERVE_DTYPES, Pt2Package  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
TYPED_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
                "INT32": "int_contents", "INT8": "int_contents", "UINT8": "uint_contents",
                "BOOL": "bool_contents"}


def generate_stubs(proto_root: Path, out_dir: Path):
    """Compiles kserve/grpc_service.proto (and its import) with grpc_tools; returns (pb2, pb2_grpc)."""
    from grpc_tools import protoc
    import grpc_tools
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    files = ["kserve/model_config.proto", "kserve/grpc_service.proto"]
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}", *files])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {proto_root}/kserve")
    sys.path.insert(0, str(out_dir))
    return (importlib.import_module("kserve.grpc_service_pb2"),
            importlib.import_module("kserve.grpc_service_pb2_grpc"))


class Stats:
    """Per-model counters for ModelStatistics; guarded by its own lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.success = [0, 0]   # count, ns
        self.rows = 0           # batch rows (Triton's inference_count)
        self.fail = [0, 0]
        self.compute_input = 0  # ns
        self.compute_infer = 0
        self.compute_output = 0
        self.last_ms = 0


def build_servicer(pb2, pb2_grpc, name: str, pkg: Pt2Package):
    from kserve import model_config_pb2 as cfg

    inputs = {t["name"]: t for t in pkg.inputs}
    batched = pkg.max_batch_size > 0 and all(t["shape"] and t["shape"][0] == -1 for t in pkg.inputs)
    stats = Stats()

    def kserve_type(t):
        return KSERVE_DTYPES[t["dtype"]][0]

    def tensor_meta(t):
        return pb2.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=kserve_type(t),
                                                        shape=t["shape"])

    def config_dims(t):
        return t["shape"][1:] if batched else t["shape"]

    config = cfg.ModelConfig(
        name=name, platform="pytorch_aoti", backend="python-grpcio",
        max_batch_size=pkg.max_batch_size if batched else 0,
        input=[cfg.ModelInput(name=t["name"], data_type=cfg.DataType.Value("TYPE_" + kserve_type(t)),
                              dims=config_dims(t)) for t in pkg.inputs],
        output=[cfg.ModelOutput(name=t["name"], data_type=cfg.DataType.Value("TYPE_" + kserve_type(t)),
                                dims=config_dims(t)) for t in pkg.outputs])

    class Servicer(pb2_grpc.GRPCInferenceServiceServicer):
        def _check_model(self, model_name, context):
            if model_name != name:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{model_name}'")

        def ServerLive(self, request, context):
            return pb2.ServerLiveResponse(live=True)

        def ServerReady(self, request, context):
            return pb2.ServerReadyResponse(ready=True)

        def ServerMetadata(self, request, context):
            return pb2.ServerMetadataResponse(name="kserve-grpcio-peer", version=torch.__version__,
                                              extensions=["model_configuration", "statistics"])

        def ModelReady(self, request, context):
            return pb2.ModelReadyResponse(ready=request.name == name)

        def ModelMetadata(self, request, context):
            self._check_model(request.name, context)
            return pb2.ModelMetadataResponse(name=name, versions=["1"], platform="pytorch_aoti",
                                             inputs=[tensor_meta(t) for t in pkg.inputs],
                                             outputs=[tensor_meta(t) for t in pkg.outputs])

        def ModelConfig(self, request, context):
            self._check_model(request.name, context)
            return pb2.ModelConfigResponse(config=config)

        def ModelStatistics(self, request, context):
            if request.name and request.name != name:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
            with stats.lock:
                d = pb2.StatisticDuration
                infer = pb2.InferStatistics(
                    success=d(count=stats.success[0], ns=stats.success[1]),
                    fail=d(count=stats.fail[0], ns=stats.fail[1]),
                    queue=d(count=stats.success[0], ns=0),
                    compute_input=d(count=stats.success[0], ns=stats.compute_input),
                    compute_infer=d(count=stats.success[0], ns=stats.compute_infer),
                    compute_output=d(count=stats.success[0], ns=stats.compute_output))
                ms = pb2.ModelStatistics(name=name, version="1", last_inference=stats.last_ms,
                                         inference_count=stats.rows,
                                         execution_count=stats.success[0], inference_stats=infer)
            return pb2.ModelStatisticsResponse(model_stats=[ms])

        def _decode(self, request, context) -> list[np.ndarray]:
            if len(request.inputs) != len(inputs):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"model '{name}' takes {len(inputs)} inputs, got {len(request.inputs)}")
            if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "raw_input_contents must have one entry per input")
            by_name = {}
            for i, t in enumerate(request.inputs):
                spec = inputs.get(t.name)
                if spec is None:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown input '{t.name}'")
                ktype, np_type = KSERVE_DTYPES[spec["dtype"]]
                if t.datatype != ktype:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"input '{t.name}': datatype {t.datatype}, model expects {ktype}")
                shape = tuple(t.shape)
                if len(shape) != len(spec["shape"]) or any(
                        s != -1 and s != d for s, d in zip(spec["shape"], shape)):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"input '{t.name}': shape {list(shape)}, model expects {spec['shape']}")
                if batched and not 1 <= shape[0] <= pkg.max_batch_size:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"input '{t.name}': batch {shape[0]} outside 1..{pkg.max_batch_size}")
                count = int(np.prod(shape))
                if request.raw_input_contents:
                    raw = request.raw_input_contents[i]
                    if len(raw) != count * np.dtype(np_type).itemsize:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"input '{t.name}': {len(raw)} bytes for shape {list(shape)}")
                    arr = np.frombuffer(raw, dtype=np_type).reshape(shape)
                else:
                    field = TYPED_FIELDS.get(ktype)
                    values = getattr(t.contents, field) if field else []
                    if len(values) != count:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"input '{t.name}': {len(values)} values for shape {list(shape)}")
                    arr = np.asarray(values, dtype=np_type).reshape(shape)
                by_name[t.name] = arr
            return [by_name[t["name"]] for t in pkg.inputs]

        def ModelInfer(self, request, context):
            t0 = time.perf_counter_ns()
            self._check_model(request.model_name, context)
            arrays = self._decode(request, context)  # aborts with INVALID_ARGUMENT
            t1 = time.perf_counter_ns()
            try:
                outs = pkg.run(arrays)
            except Exception as e:  # noqa: BLE001 - the model's own error goes back to the caller
                with stats.lock:
                    stats.fail[0] += 1
                    stats.fail[1] += time.perf_counter_ns() - t0
                context.abort(grpc.StatusCode.INTERNAL, f"model '{name}' failed: {e}")
            t2 = time.perf_counter_ns()
            wanted = {o.name for o in request.outputs}
            resp = pb2.ModelInferResponse(model_name=name, model_version="1", id=request.id)
            for spec, arr in zip(pkg.outputs, outs):
                if wanted and spec["name"] not in wanted:
                    continue
                resp.outputs.add(name=spec["name"], datatype=KSERVE_DTYPES[spec["dtype"]][0],
                                 shape=arr.shape)
                resp.raw_output_contents.append(arr.tobytes())
            t3 = time.perf_counter_ns()
            with stats.lock:
                stats.success[0] += 1
                stats.success[1] += t3 - t0
                stats.rows += int(arrays[0].shape[0]) if batched else 1
                stats.compute_input += t1 - t0
                stats.compute_infer += t2 - t1
                stats.compute_output += t3 - t2
                stats.last_ms = time.time_ns() // 1_000_000
            return resp

    return Servicer()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="NAME=PATH of the .pt2 package")
    ap.add_argument("--address", default="127.0.0.1:8001")
    ap.add_argument("--threads", type=int, default=16, help="gRPC thread pool size")
    ap.add_argument("--runners", type=int, default=2, help="package instances (containers)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the package's device)")
    ap.add_argument("--intra-op-threads", type=int, default=1,
                    help="intra-op (OpenMP) threads per model call, set on every gRPC worker thread "
                         "(the setting is per thread); like pt2serve's cpu_threads")
    ap.add_argument("--proto-root", default=str(REPO / "proto"))
    args = ap.parse_args(argv)
    name, sep, path = args.model.partition("=")
    if not sep or not name or not path:
        ap.error("--model takes NAME=PATH")
    torch.set_num_threads(args.intra_op_threads)

    with tempfile.TemporaryDirectory(prefix="kserve-stubs.") as stub_dir:
        pb2, pb2_grpc = generate_stubs(Path(args.proto_root), Path(stub_dir))
        pkg = Pt2Package(path, instances=args.runners, device=args.device)
        pool = futures.ThreadPoolExecutor(max_workers=args.threads,
                                          initializer=torch.set_num_threads,
                                          initargs=(args.intra_op_threads,))
        server = grpc.server(pool,
                             options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
        pb2_grpc.add_GRPCInferenceServiceServicer_to_server(build_servicer(pb2, pb2_grpc, name, pkg),
                                                            server)
        if server.add_insecure_port(args.address) == 0:
            print(f"cannot listen on {args.address}", file=sys.stderr)
            return 1
        server.start()
        print(f"listening on {args.address} (model {name}: {path}, {pkg.instances} runners, "
              f"{args.threads} threads, device {args.device})", flush=True)
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
        server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
