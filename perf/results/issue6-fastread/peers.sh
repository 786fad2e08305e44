#!/usr/bin/env bash
# DatenLord against ext4 (`local`) and JuiceFS on the peers that
# scripts/perf-setup-peers mounted under DIR: cached 4 KiB randread with
# O_DIRECT and with a hot page cache (fio psync, 2 jobs, one SIZE file per
# target), then single-threaded small files (../issue6-mount/smallfiles.c).
# Rounds interleave the targets workload by workload. Numbers only.
# Usage: peers.sh DIR OUT   (env: SIZE=256M, RT=10, ROUNDS=2, FILES=2000)
set -euo pipefail
dir=$1 out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
size=${SIZE:-256M} rt=${RT:-10} rounds=${ROUNDS:-2} files=${FILES:-2000}
half=$(( $(numfmt --from=iec "$size") / 2 ))
targets=(local datenlord juicefs)
mkdir -p "$out"
cc -O2 -o "$out/smallfiles" "$here/../issue6-mount/smallfiles.c"
{ echo "date: $(date -u +%FT%TZ)"; uname -r; nproc; uptime; } >"$out/machine.txt"
fio_run() { # NAME TARGET fio-args...
    local name=$1 t=$2; shift 2
    fio --name="$name" --filename="$dir/$t/fio.dat" --ioengine=psync --numjobs=2 \
        --group_reporting --output-format=json --output="$out/$name-$t.json" "$@"
}
for t in "${targets[@]}"; do
    rm -f "$dir/$t/fio.dat"
    fio_run create "$t" --rw=write --bs=1M --direct=1 --size="$half" --offset_increment="$half"
    fio_run warm "$t" --rw=read --bs=1M --direct=1 --size="$half" --offset_increment="$half"
done
for r in $(seq "$rounds"); do
    for t in "${targets[@]}"; do
        echo "== round $r $t: randread 4k O_DIRECT" >&2
        fio_run "randread-direct-r$r" "$t" --rw=randread --bs=4k --direct=1 --size="$size" --time_based --runtime="$rt"
    done
    for t in "${targets[@]}"; do
        echo "== round $r $t: randread 4k hot page cache" >&2
        fio_run "warm-buffered-r$r" "$t" --rw=read --bs=1M --direct=0 --invalidate=0 --size="$half" --offset_increment="$half"
        fio_run "randread-buffered-r$r" "$t" --rw=randread --bs=4k --direct=0 --invalidate=0 --size="$size" --time_based --runtime="$rt"
    done
    for t in "${targets[@]}"; do
        echo "== round $r $t: small files" >&2
        rm -rf "$dir/$t/sf"
        "$out/smallfiles" "$dir/$t" "$files" >"$out/smallfiles-r$r-$t.txt"
        rm -rf "$dir/$t/sf"
    done
done
for t in "${targets[@]}"; do rm -f "$dir/$t/fio.dat"; done
python3 - "$out" "${targets[@]}" <<'PY'
import json, sys, os
out, targets = sys.argv[1], sys.argv[2:]
def fio(name, t):
    j = json.load(open(os.path.join(out, f"{name}-{t}.json")))["jobs"][0]["read"]
    p = j["clat_ns"]["percentile"]
    return j["iops"], p["50.000000"] / 1000, p["99.000000"] / 1000
rounds = sorted({f.split("-r")[1].split("-")[0] for f in os.listdir(out) if f.startswith("randread-direct-r")})
for wl in ("randread-direct", "randread-buffered"):
    print(f"\n{wl}: IOPS (p50 / p99 µs), × local, per round")
    for t in targets:
        cells = []
        for r in rounds:
            i, a, b = fio(f"{wl}-r{r}", t)
            base = fio(f"{wl}-r{r}", "local")[0]
            cells.append(f"{i:,.0f} ({a:.1f} / {b:.1f}) {i / base:.2f}×")
        print(f"| {t} | " + " | ".join(cells) + " |")
print("\nsmall files per round: create+write+close/s, stat/s (1st), stat/s (2nd), unlink/s")
for t in targets:
    cells = []
    for r in rounds:
        s = json.load(open(os.path.join(out, f"smallfiles-r{r}-{t}.txt")))
        cells.append(f"{s['create_write_per_s']:,} / {s['stat_per_s']:,} / {s['stat2_per_s']:,} / {s['unlink_per_s']:,}")
    print(f"| {t} | " + " | ".join(cells) + " |")
PY
