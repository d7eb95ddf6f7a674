"""What gRPC Python costs per pushed byte before anything is sent: the SDK's three copies of a
chunk (numpy `tobytes()`, building the TensorChunk message, serializing it), per chunk size, in
one thread and split over two threads (all three hold the GIL, so two threads are no faster).

    python tools/bench/sdk_chunk_cost.py [--mib 200]
"""

import argparse
import sys
import threading
import time

import numpy as np

from sdk_push_bench import import_client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=200, help="bytes to push through, in MiB")
    args = ap.parse_args()
    import_client()  # the generated stubs
    from pt2serve.v1 import admin_pb2

    data = memoryview(np.random.default_rng(0).integers(0, 255, args.mib << 20, np.uint8))
    n = data.nbytes

    def copies(chunk: int, lo: int, hi: int, spent: list) -> None:
        t = [0.0, 0.0, 0.0]
        for offset in range(lo, hi, chunk):
            t0 = time.perf_counter()
            raw = data[offset:offset + chunk].tobytes()
            t1 = time.perf_counter()
            message = admin_pb2.UpdateConstantBufferRequest(
                chunk=admin_pb2.TensorChunk(name="w", offset=offset, data=raw))
            t2 = time.perf_counter()
            message.SerializeToString()
            t3 = time.perf_counter()
            t[0] += t1 - t0
            t[1] += t2 - t1
            t[2] += t3 - t2
        spent.append(t)

    print(f"{n / 1e6:.0f} MB in chunks, GB/s of each copy and of all three (one thread), "
          "and all three split over two threads")
    for chunk in (256 << 10, 512 << 10, 1 << 20, 2 << 20, 8 << 20):
        spent: list = []
        copies(chunk, 0, n, spent)
        tb, build, ser = spent[0]
        half = (n // 2) // chunk * chunk
        threads = [threading.Thread(target=copies, args=(chunk, lo, hi, []))
                   for lo, hi in ((0, half), (half, n))]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        two = time.perf_counter() - start
        print(f"chunk {chunk >> 10:5d} KiB: tobytes {n / tb / 1e9:5.2f}, message {n / build / 1e9:5.2f}, "
              f"serialize {n / ser / 1e9:5.2f}, all three {n / (tb + build + ser) / 1e9:5.2f}; "
              f"two threads {n / two / 1e9:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
