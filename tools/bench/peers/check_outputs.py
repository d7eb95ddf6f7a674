#!/usr/bin/env python3
"""Checks a KServe v2 gRPC server's answers for one zoo model against eager PyTorch.

NAME.reference.safetensors (written by tools/export/export_model.py) holds inputs (`input.*`)
and the eager module's outputs for them (`output.*`). This sends the inputs through tritonclient
(whole batch, then row by row as batch-1 requests) and compares every output with the eager
one (rtol/atol 1e-4), then sends a wrongly shaped input and expects INVALID_ARGUMENT.
Exit 0 when all agree; prints one line per check.

    check_outputs.py --address 127.0.0.1:8001 --model mlp --model-dir DIR
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tc
from safetensors.numpy import load_file
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def infer(client, model, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    reqs = []
    for name, arr in inputs.items():
        r = tc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        r.set_data_from_numpy(arr)
        reqs.append(r)
    res = client.infer(model, reqs, outputs=[tc.InferRequestedOutput(o) for o in outputs])
    return {o: res.as_numpy(o) for o in outputs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--address", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--wait", type=float, default=120, help="seconds to wait for the model to be ready")
    args = ap.parse_args(argv)
    ref = load_file(str(Path(args.model_dir) / f"{args.model}.reference.safetensors"))
    inputs = {k[len("input."):]: v for k, v in ref.items() if k.startswith("input.")}
    expected = {k[len("output."):]: v for k, v in ref.items() if k.startswith("output.")}
    client = tc.InferenceServerClient(args.address)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            if client.is_model_ready(args.model):
                break
        except InferenceServerException:
            pass
        if time.monotonic() > deadline:
            print(f"FAIL {args.model}@{args.address}: not ready after {args.wait} s")
            return 1
        time.sleep(0.2)

    ok = True
    rows = next(iter(inputs.values())).shape[0]
    cases = [("whole batch", inputs)] + [
        (f"row {i} (batch 1)", {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(rows)]
    for label, feed in cases:
        got = infer(client, args.model, feed, list(expected))
        sl = slice(None) if label == "whole batch" else slice(int(label.split()[1]), int(label.split()[1]) + 1)
        for name, want in expected.items():
            if got[name].shape != want[sl].shape or not np.allclose(got[name], want[sl], rtol=1e-4, atol=1e-4):
                ok = False
                print(f"FAIL {args.model} {label}: output {name} differs from eager "
                      f"(max abs diff {np.max(np.abs(got[name] - want[sl])) if got[name].shape == want[sl].shape else 'shape ' + str(got[name].shape)})")
    if ok:
        print(f"ok {args.model}@{args.address}: {len(cases)} requests match eager PyTorch")

    name, arr = next(iter(inputs.items()))
    bad = {**inputs, name: np.zeros((1,) + tuple(d + 1 for d in arr.shape[1:]), dtype=arr.dtype)}
    try:
        infer(client, args.model, bad, list(expected))
        ok = False
        print(f"FAIL {args.model}: a wrongly shaped input was accepted")
    except InferenceServerException as e:
        if "INVALID_ARGUMENT" in str(e.status()):
            print(f"ok {args.model}: wrong shape -> {e.status()}")
        else:
            ok = False
            print(f"FAIL {args.model}: wrong shape -> {e.status()} {e.message()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
