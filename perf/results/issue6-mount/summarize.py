#!/usr/bin/env python3
"""Tables for perf/RESULTS.md from the fio JSON and smallfiles lines in DIR."""
import glob, json, os, sys

d = sys.argv[1]
targets = ["local", "datenlord", "juicefs"]

def fio(name):
    p = os.path.join(d, name + ".json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        text = f.read()
    if "{" not in text:
        return None
    j = json.loads(text[text.index("{"):])
    job = j["jobs"][0]
    io = job["read"] if job["read"]["io_bytes"] else job["write"]
    pct = io["clat_ns"].get("percentile", {})
    return {
        "iops": io["iops"], "mibs": io["bw_bytes"] / 2**20,
        "p50": pct.get("50.000000", 0) / 1000, "p99": pct.get("99.000000", 0) / 1000,
        "usr": job["usr_cpu"], "sys": job["sys_cpu"],
    }

def row(w, t, r, base):
    rb = base
    ratio = (r["iops"] / rb["iops"]) if rb else float("nan")
    return f"| {w} | {t} | {r['iops']:,.0f} | {r['mibs']:,.0f} | {r['p50']:,.1f} | {r['p99']:,.1f} | {ratio:.2f} |"

print("| workload | target | IOPS | MiB/s | p50 µs | p99 µs | × local |")
print("|---|---|---:|---:|---:|---:|---:|")
for w in ["randread-direct", "randread-buffered", "seqread-direct", "seqread-buffered",
          "seqwrite-direct", "seqwrite-buffered"]:
    base = fio(f"{w}-local")
    for t in targets:
        r = fio(f"{w}-{t}")
        if r:
            print(row(w, t, r, base))
print()
print("| target | create+write 4 KiB /s | stat /s (1st) | stat /s (2nd) | unlink /s |")
print("|---|---:|---:|---:|---:|")
for t in targets:
    p = os.path.join(d, f"smallfiles-{t}.json")
    if os.path.exists(p):
        s = json.load(open(p))
        print(f"| {t} | {s['create_write_per_s']:,} | {s['stat_per_s']:,} | {s['stat2_per_s']:,} | {s['unlink_per_s']:,} |")
print()
print("| cores | rep | IOPS | p50 µs | p99 µs |")
print("|---|---|---:|---:|---:|")
for p in sorted(glob.glob(os.path.join(d, "randread-direct-cores*-rep*.json"))):
    n = os.path.basename(p)[:-5]
    r = fio(n)
    c, rep = n.split("cores")[1].split("-rep")
    print(f"| {c} | {rep} | {r['iops']:,.0f} | {r['p50']:,.1f} | {r['p99']:,.1f} |")
