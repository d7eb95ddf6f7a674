#!/usr/bin/env python3
"""Turns the JSON lines written by the bench tools into the Markdown tables of
run_benchmarks.sh. Standard library only (runs on any host with python3).

  bench_report.py side-by-side INPROC.jsonl NATIVE.jsonl KSERVE.jsonl
      gRPC vs in-process per stream count (rows matched by streams).
  bench_report.py swap-under-load UPLOAD.jsonl GRPC.jsonl
      daemon hot-swaps while grpc_bench ran (swap times, client latency).
  bench_report.py targets POOL_BENCH.md INPROC.jsonl NATIVE.jsonl KSERVE.jsonl SWAP.jsonl \
          [LOAD.jsonl [FLOOR.jsonl]]
      the issue targets, each with the measured value and MET / NOT MET (issue 2 from
      pool_bench's Markdown output; LOAD = upload_bench rows of swaps under gRPC load;
      FLOOR = loopback_bench rows, quoted next to the gRPC latency target).
"""

from __future__ import annotations

import json
import statistics
import sys


def load(path: str) -> list[dict]:
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
    except FileNotFoundError:
        pass
    return rows


def by_streams(rows: list[dict]) -> dict[int, dict]:
    return {r["streams"]: r for r in rows}


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def side_by_side(inproc_path: str, native_path: str, kserve_path: str) -> None:
    inproc, native, kserve = (by_streams(load(p)) for p in (inproc_path, native_path, kserve_path))
    streams = sorted(set(inproc) | set(native) | set(kserve))
    print("| streams | in-process req/s | native req/s | kserve req/s | native / in-process "
          "| kserve / in-process | in-process p50 us | native p50 us | kserve p50 us "
          "| native p50 - in-process | kserve p50 - in-process | in-process p99 us "
          "| native p99 us | kserve p99 us | errors (native/kserve) |")
    print("|" + "---|" * 15)
    for s in streams:
        i, n, k = inproc.get(s), native.get(s), kserve.get(s)

        def get(r, key):
            return None if r is None else r[key]

        def ratio(r):
            if r is None or i is None or not i["rps"]:
                return "-"
            return f"{100.0 * r['rps'] / i['rps']:.0f}%"

        def delta(r):
            if r is None or i is None:
                return "-"
            return f"{r['p50_us'] - i['p50_us']:+.1f}"

        print(f"| {s} | {fmt(get(i, 'rps'), 0)} | {fmt(get(n, 'rps'), 0)} | {fmt(get(k, 'rps'), 0)} "
              f"| {ratio(n)} | {ratio(k)} | {fmt(get(i, 'p50_us'))} | {fmt(get(n, 'p50_us'))} "
              f"| {fmt(get(k, 'p50_us'))} | {delta(n)} | {delta(k)} | {fmt(get(i, 'p99_us'))} "
              f"| {fmt(get(n, 'p99_us'))} | {fmt(get(k, 'p99_us'))} "
              f"| {get(n, 'errors') if n else '-'}/{get(k, 'errors') if k else '-'} |")


def swap_under_load(upload_path: str, grpc_path: str) -> None:
    ups = load(upload_path)
    grpc = load(grpc_path)
    if not ups:
        print("(no swaps recorded)")
        return
    swap_ms = [u["swap_us"] / 1e3 for u in ups]
    rtt_ms = [u["swap_rtt_ms"] for u in ups]
    stage_ms = [u["fold_us"] / 1e3 for u in ups]
    print("| swaps | swap (server, requests paused) median / max ms | swap round trip median / max ms "
          "| staging (server) median / max ms | client req/s | client p50 / p99 us | failed requests |")
    print("|---|---|---|---|---|---|---|")
    g = grpc[-1] if grpc else None
    client = (f"{g['rps']:.0f} | {g['p50_us']:.0f} / {g['p99_us']:.0f} | {g['errors']}"
              if g else "- | - | -")
    print(f"| {len(ups)} | {statistics.median(swap_ms):.3f} / {max(swap_ms):.3f} "
          f"| {statistics.median(rtt_ms):.2f} / {max(rtt_ms):.2f} "
          f"| {statistics.median(stage_ms):.1f} / {max(stage_ms):.1f} | {client} |")


def pool_target(path: str) -> None:
    """Issue 2: pool throughput within 5% of raw wherever threads <= runners."""
    ratios = []
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not cells[0].isdigit():
            continue
        runners, threads, ratio = int(cells[0]), int(cells[1]), float(cells[4])
        if threads <= runners:
            ratios.append((ratio, runners, threads))
    if not ratios:
        print("| 2 | RunnerPool within 5% of the raw loader at threads <= runners | no rows | n/a |")
        return
    worst = min(ratios)
    print(f"| 2 | RunnerPool within 5% of the raw loader at threads <= runners "
          f"| worst pool/raw {worst[0]:.3f} ({worst[1]} runners, {worst[2]} threads) "
          f"| {verdict(worst[0] >= 0.95)} |")


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def targets(pool_path: str, inproc_path: str, native_path: str, kserve_path: str, swap_path: str,
            load_path: str | None = None, floor_path: str | None = None) -> None:
    inproc, native, kserve = (by_streams(load(p)) for p in (inproc_path, native_path, kserve_path))
    swaps = load(swap_path)
    print("| issue | target | measured here | verdict |")
    print("|---|---|---|---|")
    pool_target(pool_path)
    # Issue 3: gRPC p50 <= in-process p50 + 50 us, mlp batch 1 (1 stream).
    i1, n1, k1 = inproc.get(1), native.get(1), kserve.get(1)
    if i1 and n1:
        dn = n1["p50_us"] - i1["p50_us"]
        dk = k1["p50_us"] - i1["p50_us"] if k1 else None
        ok = dn <= 50 and (dk is None or dk <= 50)
        # The loopback TCP echo (loopback_bench) bounds any RPC on this host.
        tcp = next((r for r in (load(floor_path) if floor_path else [])
                    if r["protocol"] == "tcp echo" and r["streams"] == 1), None)
        floor = (f"; a bare loopback TCP echo alone takes {tcp['p50_us']:.1f} us "
                 f"(in-process {tcp['p50_us'] - i1['p50_us']:+.1f} us)") if tcp else ""
        print(f"| 3 | gRPC p50 <= in-process p50 + 50 us (1 stream, batch 1, loopback) "
              f"| native {dn:+.1f} us, kserve {'-' if dk is None else f'{dk:+.1f}'} us{floor} "
              f"| {verdict(ok)} |")
    # Issue 5: gRPC throughput >= 80% of in-process at 16 clients.
    i16, n16, k16 = inproc.get(16), native.get(16), kserve.get(16)
    if i16 and n16 and i16["rps"]:
        rn = n16["rps"] / i16["rps"]
        rk = k16["rps"] / i16["rps"] if k16 else None
        ok = rn >= 0.8 and (rk is None or rk >= 0.8)
        print(f"| 5 | gRPC throughput >= 80% of in-process at 16 clients (CUDA target) "
              f"| native {100 * rn:.0f}%, kserve {'-' if rk is None else f'{100 * rk:.0f}%'} "
              f"| {verdict(ok)} |")
    if load_path:
        ups = load(load_path)
        if ups:
            worst = max(u["swap_rtt_ms"] for u in ups)
            print(f"| 5 | hot-swap < 10 ms under 16-client gRPC load (CUDA target) "
                  f"| max swap round trip {worst:.2f} ms (server {max(u['swap_us'] for u in ups) / 1e3:.3f} ms) "
                  f"| {verdict(worst < 10)} |")
    for s in swaps:
        p = s.get("pt2serve")
        if not p:
            continue
        infer_ms = p["steady_compute_p50_us"] / 1e3
        worst = p["swap_call"]["max_ms"]
        ok = p["swap_call"]["n"] > 0 and worst <= infer_ms + 1.0
        name = s["package"].rsplit("/", 1)[-1]
        p99 = p.get("steady_compute_p99_us")
        p99_text = f" (p99 {p99 / 1e3:.3f} ms)" if p99 is not None else ""
        print(f"| 4 | swap returns within one inference + 1 ms ({s['threads']} threads, "
              f"{s['runners']} runners, {name}) | max Swap() {worst:.3f} ms, inference "
              f"median {infer_ms:.3f} ms{p99_text} | {verdict(ok)} |")
        sp99, dp99 = p["steady"]["p99_us"], p["during_swap"]["p99_us"]
        ok = p["during_swap"]["n"] > 0 and dp99 <= 2 * sp99
        print(f"| 4 | p99 during swaps <= 2x steady p99 ({name}) | {dp99:.0f} us vs steady "
              f"{sp99:.0f} us (n={p['during_swap']['n']}) | {verdict(ok)} |")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "side-by-side" and len(args) == 3:
        side_by_side(*args)
    elif cmd == "swap-under-load" and len(args) == 2:
        swap_under_load(*args)
    elif cmd == "targets" and len(args) in (5, 6, 7):
        targets(*args)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
