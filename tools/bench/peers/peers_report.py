#!/usr/bin/env python3
"""Turns run_peers.sh's perf_analyzer runs into one table (Markdown + JSON).

    peers_report.py row DATA_DIR MODEL SERVER LABEL CONCURRENCY   (appends one JSON line)
    peers_report.py table DATA_DIR OUT_MD OUT_JSON                 (writes the tables)

A row reads DATA_DIR/runs/<model>.<label, spaces as _>.c<N>.{csv,log}: throughput and p50/p99 (µs) from
perf_analyzer's CSV, and rows per model call (inference count / execution count) from the
server-side section of its report when the server has statistics. A run that failed is kept
with its error (the last line of the log).
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path


def row(data: Path, model: str, server: str, label: str, conc: int) -> None:
    base = str(data / "runs" / f"{model}.{label.replace(' ', '_')}.c{conc}")
    log_path, csv_path = Path(base + ".log"), Path(base + ".csv")
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    r = {"model": model, "server": server, "label": label, "concurrency": conc}
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    if rows:
        c = rows[0]
        r.update(req_s=float(c["Inferences/Second"]), p50_us=int(c["p50 latency"]),
                 p99_us=int(c["p99 latency"]))
        inf = re.search(r"Inference count: (\d+)", log)
        exe = re.search(r"Execution count: (\d+)", log)
        if inf and exe and int(exe.group(1)) > 0:
            r["rows_per_call"] = round(int(inf.group(1)) / int(exe.group(1)), 2)
    else:
        lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
        r["error"] = lines[-1][:200] if lines else "perf_analyzer produced nothing"
    with (data / "rows.jsonl").open("a") as f:
        f.write(json.dumps(r) + "\n")


def table(data: Path, out_md: Path, out_json: Path) -> None:
    rows = [json.loads(ln) for ln in (data / "rows.jsonl").read_text().splitlines() if ln.strip()]
    meta = json.loads((data / "meta.json").read_text()) if (data / "meta.json").exists() else {}
    out_json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    concs = sorted({r["concurrency"] for r in rows})
    md = []
    for model in dict.fromkeys(r["model"] for r in rows):
        md += [f"### {model}", "",
               "| server | " + " | ".join(f"c={c} req/s | p50 µs | p99 µs" for c in concs) + " | rows/call at c=" + str(concs[-1]) + " |",
               "|---|" + "---|---|---|" * len(concs) + "---|"]
        for label in dict.fromkeys(r["label"] for r in rows if r["model"] == model):
            cells, rpc = [], "-"
            for c in concs:
                hit = [r for r in rows if r["model"] == model and r["label"] == label and r["concurrency"] == c]
                if not hit:
                    cells.append("| | ")
                elif "error" in hit[0]:
                    cells.append(f"failed: {hit[0]['error'][:60]} | | ")
                else:
                    h = hit[0]
                    cells.append(f"{h['req_s']:.0f} | {h['p50_us']} | {h['p99_us']}")
                    if c == concs[-1] and "rows_per_call" in h:
                        rpc = f"{h['rows_per_call']:.1f}"
            md.append(f"| {label} | " + " | ".join(cells) + f" | {rpc} |")
        md.append("")
    out_md.write_text("\n".join(md))
    sys.stdout.write("\n".join(md) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "row":
        row(Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif len(sys.argv) == 5 and sys.argv[1] == "table":
        table(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(__doc__)
