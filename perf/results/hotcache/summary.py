#!/usr/bin/env python3
"""Tables of a hotcache.sh run: IOPS (MiB/s for 1 MiB) of every target per
round, each round's ratio to ext4 (`local`) and the median ratio.
Usage: summary.py OUT"""
import glob
import json
import os
import re
import statistics
import sys

out = sys.argv[1]
runs = {}  # (workload, jobs) -> target -> round -> (iops, p50 us, p99 us)
for path in glob.glob(os.path.join(out, "*-j*-*-r*.json")):
    m = re.match(r"(\w+)-j(\d+)-(\w+)-r(\d+)\.json$", os.path.basename(path))
    if not m:
        continue
    with open(path) as f:
        read = json.load(f)["jobs"][0]["read"]
    pct = read["clat_ns"]["percentile"]
    value = read["iops"] if m[1].startswith("randread") else read["bw_bytes"] / 2**20
    runs.setdefault((m[1], int(m[2])), {}).setdefault(m[3], {})[int(m[4])] = (
        value, pct["50.000000"] / 1000, pct["99.000000"] / 1000)

for (wl, jobs), by_target in sorted(runs.items()):
    unit = "IOPS" if wl.startswith("randread") else "MiB/s"
    rounds = sorted(by_target["local"])
    print(f"\n### {wl}, {jobs} job{'s' if jobs > 1 else ''}: {unit} per round (× local in the same round)\n")
    print("| target | " + " | ".join(f"round {r}" for r in rounds) + " | median × local |")
    print("|---|" + "---:|" * (len(rounds) + 1))
    for t in ("local", "local4k", "datenlord", "passthrough"):
        if t not in by_target:
            continue
        cells, ratios = [], []
        for r in rounds:
            v = by_target[t][r][0]
            ratio = v / by_target["local"][r][0]
            ratios.append(ratio)
            cells.append(f"{v:,.0f} ({ratio:.2f})")
        print(f"| {t} | " + " | ".join(cells) + f" | **{statistics.median(ratios):.3f}** |")
    if "local4k" in by_target:
        dl = [by_target["datenlord"][r][0] / by_target["local4k"][r][0] for r in rounds]
        print(f"\ndatenlord × local4k per round: " + ", ".join(f"{x:.2f}" for x in dl)
              + f"; median **{statistics.median(dl):.3f}**")
    p = {t: statistics.median(by_target[t][r][1] for r in rounds) for t in by_target}
    print("\nmedian p50 µs: " + ", ".join(f"{t} {v:.2f}" for t, v in p.items()))
