#!/usr/bin/env python3
"""Per-op FUSE request counts, mean and bucket p50/p99 between two scrapes
of the daemon's --metrics-addr (datenlord_fuse_request_seconds)."""
import re, sys
from collections import defaultdict

def load(p):
    v = {}
    for line in open(p):
        m = re.match(r'^(\S+?)(\{[^}]*\})?\s+(\S+)$', line.strip())
        if m:
            v[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return v

a, b = load(sys.argv[1]), load(sys.argv[2])
ops = defaultdict(dict)
for (name, labels), val in b.items():
    if not name.startswith("datenlord_fuse_request_seconds"):
        continue
    op = re.search(r'op="([^"]+)"', labels).group(1)
    d = val - a.get((name, labels), 0.0)
    if name.endswith("_bucket"):
        le = re.search(r'le="([^"]+)"', labels).group(1)
        ops[op].setdefault("b", []).append((float("inf") if le == "+Inf" else float(le), d))
    elif name.endswith("_count"):
        ops[op]["n"] = d
    elif name.endswith("_sum"):
        ops[op]["s"] = d

def q(buckets, n, frac):
    for le, c in sorted(buckets):
        if c >= frac * n:
            return le
    return float("inf")

print("| op | requests | mean µs | p50 ≤ µs | p99 ≤ µs |")
print("|---|---:|---:|---:|---:|")
for op, r in sorted(ops.items(), key=lambda kv: -kv[1].get("n", 0)):
    n = r.get("n", 0)
    if n <= 0:
        continue
    print(f"| {op} | {n:,.0f} | {r['s'] / n * 1e6:,.1f} | {q(r['b'], n, .5) * 1e6:,.0f} | {q(r['b'], n, .99) * 1e6:,.0f} |")
for k in sorted(b):
    if k[0].startswith("datenlord_") and not k[0].startswith("datenlord_fuse_request"):
        d = b[k] - a.get(k, 0.0)
        if d and ("total" in k[0] or "hits" in k[0] or "miss" in k[0]):
            print(f"  {k[0]}{k[1]} +{d:,.0f}", file=sys.stderr)
