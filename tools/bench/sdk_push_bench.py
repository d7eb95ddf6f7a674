"""Python SDK push throughput: `Client.push(model, state_dict, version, swap=True)` in a row.

The state_dict is the package's weights file loaded as numpy arrays (what a training loop
hands over after `.numpy()`), so the time is the SDK's: chunking, hashing (SHA-256 in the
trailer), gRPC Python, and the server's staging and swap. Prints one line per push and a
summary line; a running daemon serving MODEL is needed:

    python tools/bench/sdk_push_bench.py --admin 127.0.0.1:PORT --token-file T \
        --model big_mlp --weights DIR/big_mlp.weights.safetensors --pushes 5
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "python"))
from pt2serve_client import Client  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--admin", required=True, help="admin address of the daemon")
    ap.add_argument("--token-file", default="", help="file holding the admin token")
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", required=True, help="safetensors file of the model's weights")
    ap.add_argument("--pushes", type=int, default=5)
    args = ap.parse_args()

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    state = load_file(args.weights)  # numpy arrays in memory, as a training loop has them
    total = sum(a.nbytes for a in state.values())
    client = Client(args.admin, token=token)
    rates = []
    for i in range(args.pushes):
        start = time.perf_counter()
        result = client.push(args.model, state, f"sdk-bench-{i}", swap=True)
        took = time.perf_counter() - start
        rates.append(total / took / 1e6)
        print(f"push {i}: {total / 1e6:.1f} MB in {took:.3f} s = {rates[-1]:.0f} MB/s "
              f"(server staging {result.server_staging_us / 1e3:.1f} ms)", flush=True)
    print(f"sdk push --swap {args.model}: {total / 1e6:.1f} MB, {args.pushes} pushes, "
          f"median {statistics.median(rates):.0f} MB/s, best {max(rates):.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
