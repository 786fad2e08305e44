#!/usr/bin/env bash
# A/B of two datenlord binaries on cached 4 KiB O_DIRECT random reads
# (fio psync, 2 jobs) with --cores 1 and 2, rounds interleaved so machine
# load falls on both alike; then one small-file pass (smallfiles.c from
# ../issue6-mount) per binary.
# Usage: ab.sh DIR OUT NAME=BIN [NAME=BIN...]
#   env: SIZE (256M), RT (10 s), ROUNDS (2), FILES (1000), MEM (1G)
set -euo pipefail
dir=$1 out=$2
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
size=${SIZE:-256M} rt=${RT:-10} rounds=${ROUNDS:-2} files=${FILES:-1000}
half=$(( $(numfmt --from=iec "$size") / 2 ))
mkdir -p "$dir" "$out"
cc -O2 -o "$dir/smallfiles" "$here/../issue6-mount/smallfiles.c"
mnt=$dir/mnt
mkdir -p "$mnt"
up() { # NAME BIN CORES
    rm -rf "$dir/data-$1"
    "$2" mount "$mnt" --data-dir "$dir/data-$1" --memory-size "${MEM:-1G}" --cache-size 512M \
        --cores "$3" --metrics-addr 127.0.0.1:9577
}
down() {
    local pid
    pid=$(cat "$dir/data-$1/datenlord.pid")
    umount "$mnt"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
common=(--filename="$mnt/fio.dat" --ioengine=psync --numjobs=2 --group_reporting --output-format=json)
{ echo "date: $(date -u +%FT%TZ)"; uname -r; nproc; uptime; } >"$out/machine.txt"
for round in $(seq "$rounds"); do
    for cores in 1 2; do
        for pair in "$@"; do
            name=${pair%%=*} bin=${pair#*=}
            echo "== round $round cores $cores $name" >&2
            up "$name" "$bin" "$cores"
            fio --name=create "${common[@]}" --rw=write --bs=1M --direct=1 --size="$half" --offset_increment="$half" --output=/dev/null
            fio --name=warm "${common[@]}" --rw=read --bs=1M --direct=1 --size="$half" --offset_increment="$half" --output=/dev/null
            fio --name=randread "${common[@]}" --rw=randread --bs=4k --direct=1 --size="$size" \
                --time_based --runtime="$rt" --output="$out/randread-$name-cores$cores-r$round.json"
            curl -s http://127.0.0.1:9577/metrics | grep -v '^#' >"$out/metrics-$name-cores$cores-r$round.txt" || true
            down "$name"
        done
    done
done
for pair in "$@"; do
    name=${pair%%=*} bin=${pair#*=}
    echo "== smallfiles $name" >&2
    up "$name" "$bin" 2
    "$dir/smallfiles" "$mnt" "$files" >"$out/smallfiles-$name.txt"
    down "$name"
done
rm -rf "$dir"/data-*
python3 - "$out" <<'PY'
import json, sys, glob, os, re
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "randread-*.json"))):
    m = re.match(r"randread-(.+)-cores(\d)-r(\d+)\.json", os.path.basename(f))
    j = json.load(open(f))["jobs"][0]["read"]
    pct = j["clat_ns"]["percentile"]
    rows.setdefault((m[1], m[2]), []).append(
        (j["iops"], pct["50.000000"] / 1000, pct["99.000000"] / 1000))
print("| binary | cores | IOPS per round | p50 / p99 µs per round |")
print("|---|---|---|---|")
for (name, cores), v in sorted(rows.items()):
    print(f"| {name} | {cores} | " + ", ".join(f"{i:,.0f}" for i, _, _ in v) + " | "
          + ", ".join(f"{a:.1f} / {b:.1f}" for _, a, b in v) + " |")
PY
