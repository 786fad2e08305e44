"""Tables for perf/RESULTS.md from bench.sh's output directory."""
import glob
import json
import os
import re
import sys

out = sys.argv[1]
meta = {}
for f in sorted(glob.glob(os.path.join(out, "meta-*.json"))):
    mode, rnd = re.match(r"meta-(.+)-r(\d+)\.json", os.path.basename(f)).groups()
    meta.setdefault(mode, []).append(json.load(open(f)))
print("| mode | empty creates/s per round | stats/s per round | unlinks/s per round |")
print("|---|---|---|---|")
for mode, runs in sorted(meta.items()):
    col = lambda k: ", ".join(f"{r[k]:,}" for r in runs)
    print(f"| {mode} | {col('create_empty_per_s')} | {col('stat_per_s')} | {col('unlink_per_s')} |")
print()
small = {}
for f in sorted(glob.glob(os.path.join(out, "smallfiles-*.json"))):
    mode, rnd = re.match(r"smallfiles-(.+)-r(\d+)\.json", os.path.basename(f)).groups()
    small.setdefault(mode, []).append(json.load(open(f)))
if small:
    print("| mode | create + write 4 KiB + close /s | stat 1st pass /s | stat 2nd pass /s | unlink /s |")
    print("|---|---|---|---|---|")
    for mode, runs in sorted(small.items()):
        col = lambda k: ", ".join(f"{r[k]:,}" for r in runs)
        print(f"| {mode} | {col('create_write_per_s')} | {col('stat_per_s')} | {col('stat2_per_s')} | {col('unlink_per_s')} |")
    print()
rows = {}
for f in sorted(glob.glob(os.path.join(out, "randread-*.json"))):
    mode, jobs, rnd = re.match(r"randread-(.+)-jobs(\d)-r(\d+)\.json", os.path.basename(f)).groups()
    j = json.load(open(f))["jobs"][0]["read"]
    pct = j["clat_ns"]["percentile"]
    rows.setdefault((mode, jobs), []).append(
        (j["iops"], pct["50.000000"] / 1000, pct["99.000000"] / 1000))
print("| mode | fio jobs | IOPS per round | p50 / p99 µs per round |")
print("|---|---|---|---|")
for (mode, jobs), v in sorted(rows.items()):
    print(f"| {mode} | {jobs} | " + ", ".join(f"{i:,.0f}" for i, _, _ in v) + " | "
          + ", ".join(f"{a:.1f} / {b:.1f}" for _, a, b in v) + " |")
