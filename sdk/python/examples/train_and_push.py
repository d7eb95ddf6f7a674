"""Trains a tiny model and pushes its weights to a running pt2serve every K steps while a
client keeps sending requests, checking that every response matches the weights version it
names (its output equals that version's eager output).

    python sdk/python/examples/train_and_push.py --admin-address 127.0.0.1:8003 \
        --address 127.0.0.1:8001 --token-file admin.token --steps 100 --push-every 20

The daemon must serve the zoo's `mlp` package (tools/export/export_model.py zoo) under the name
given with --model: the model trained here has the same architecture, so its state_dict keys
are the package's constant names. Exits 1 if any response did not match its version.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from pt2serve_client import Client
from pt2serve.v1 import inference_pb2, inference_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools" / "export"))
from model_zoo import MLP  # noqa: E402  (the served package's architecture)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admin-address", required=True)
    p.add_argument("--address", required=True, help="inference address (pt2serve.v1)")
    p.add_argument("--token-file", required=True)
    p.add_argument("--model", default="mlp")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--push-every", type=int, default=20)
    args = p.parse_args()

    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = torch.randn(4, 16)                 # what the request thread sends
    expected: dict[str, np.ndarray] = {}       # version -> eager output on `probe`
    lock = threading.Lock()
    stop = threading.Event()
    stats = {"requests": 0, "mismatched": 0, "unknown_version": 0, "versions": set()}

    def send_requests() -> None:
        x = probe.numpy()
        req = inference_pb2.RunRequest(model=args.model, inputs=[inference_pb2.Tensor(
            name="x", dtype=inference_pb2.DT_FLOAT32, shape=list(x.shape), data=x.tobytes())])
        with grpc.insecure_channel(args.address) as ch:
            stub = inference_pb2_grpc.InferenceStub(ch)
            while not stop.is_set():
                resp = stub.Run(req, timeout=10)
                y = np.frombuffer(resp.outputs[0].data, np.float32).reshape(4, 8)
                with lock:
                    stats["requests"] += 1
                    want = expected.get(resp.weights_version)
                    if want is None:
                        stats["unknown_version"] += 1  # compiled-in weights, before a push
                        continue
                    stats["versions"].add(resp.weights_version)
                    if not np.allclose(y, want, rtol=1e-4, atol=1e-5):
                        stats["mismatched"] += 1

    token = Path(args.token_file).read_text().strip()
    sender = threading.Thread(target=send_requests, daemon=True)
    with Client(args.admin_address, token=token) as client:
        sender.start()
        for step in range(1, args.steps + 1):
            x = torch.randn(32, 16)
            loss = ((model(x) - x[:, :8].sin()) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % args.push_every == 0:
                version = f"step-{step}"
                with torch.no_grad():
                    want = model(probe).numpy().copy()
                with lock:
                    expected[version] = want
                r = client.push(args.model, model.state_dict(), version=version, swap=True)
                print(f"step {step}: loss {loss.item():.4f}, pushed {version} "
                      f"({r.bytes_sent} bytes, staged in {r.server_staging_us / 1e3:.1f} ms)")
                time.sleep(0.2)  # let requests run on this version
        stop.set()
        sender.join(timeout=15)
    print(f"{stats['requests']} requests, versions seen {sorted(stats['versions'])}, "
          f"{stats['mismatched']} mismatched, {stats['unknown_version']} on the initial weights")
    pushed = len(expected)
    ok = stats["mismatched"] == 0 and len(stats["versions"]) == pushed and pushed > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
