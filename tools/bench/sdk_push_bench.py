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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]


def import_client():
    """pt2serve_client from this checkout; its generated stubs as sdk/python/setup.py makes them
    when no installed pt2serve-client provides them."""
    sys.path.insert(0, str(REPO / "sdk" / "python"))
    try:
        import pt2serve.v1.admin_pb2  # noqa: F401
    except ImportError:
        import grpc_tools
        out = Path(tempfile.mkdtemp(prefix="pt2serve-stubs-"))
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'proto'}",
                        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                        f"--python_out={out}", f"--grpc_python_out={out}",
                        "pt2serve/v1/inference.proto", "pt2serve/v1/admin.proto"], check=True)
        for package in (out / "pt2serve", out / "pt2serve" / "v1"):
            (package / "__init__.py").touch()
        sys.path.insert(0, str(out))
    from pt2serve_client import Client
    return Client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--admin", required=True, help="admin address of the daemon")
    ap.add_argument("--token-file", default="", help="file holding the admin token")
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", required=True, help="safetensors file of the model's weights")
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument("--chunk-mib", type=float, default=0,
                    help="chunk size in MiB (default: the SDK's)")
    args = ap.parse_args()

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    state = load_file(args.weights)  # numpy arrays in memory, as a training loop has them
    total = sum(a.nbytes for a in state.values())
    client = import_client()(args.admin, token=token)
    rates = []
    for i in range(args.pushes):
        start = time.perf_counter()
        extra = {"chunk_bytes": int(args.chunk_mib * (1 << 20))} if args.chunk_mib else {}
        result = client.push(args.model, state, f"sdk-bench-{i}", swap=True, **extra)
        took = time.perf_counter() - start
        rates.append(total / took / 1e6)
        print(f"push {i}: {total / 1e6:.1f} MB in {took:.3f} s = {rates[-1]:.0f} MB/s "
              f"(server staging {result.server_staging_us / 1e3:.1f} ms)", flush=True)
    chunks = f" --chunk-mib {args.chunk_mib:g}" if args.chunk_mib else ""
    print(f"sdk push --swap {args.model}{chunks}: {total / 1e6:.1f} MB, {args.pushes} pushes, "
          f"median {statistics.median(rates):.0f} MB/s, best {max(rates):.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
