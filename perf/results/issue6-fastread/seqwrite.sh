#!/usr/bin/env bash
# A/B of datenlord binaries on 1 MiB O_DIRECT sequential writes (fio psync,
# 2 jobs, each writes half of a new SIZE file), rounds interleaved.
# Usage: seqwrite.sh DIR OUT NAME=BIN [NAME=BIN...]   (env: SIZE=256M, ROUNDS=2)
set -euo pipefail
dir=$1 out=$2
shift 2
size=${SIZE:-256M} rounds=${ROUNDS:-2}
half=$(( $(numfmt --from=iec "$size") / 2 ))
mnt=$dir/mnt
mkdir -p "$mnt" "$out"
for r in $(seq "$rounds"); do
    for pair in "$@"; do
        name=${pair%%=*} bin=${pair#*=}
        rm -rf "$dir/data-$name"
        "$bin" mount "$mnt" --data-dir "$dir/data-$name" --memory-size 512M --cache-size 512M
        fio --name=seqwrite --filename="$mnt/w.dat" --ioengine=psync --numjobs=2 --group_reporting \
            --rw=write --bs=1M --direct=1 --size="$half" --offset_increment="$half" \
            --output-format=json --output="$out/seqwrite-$name-r$r.json"
        pid=$(cat "$dir/data-$name/datenlord.pid")
        umount "$mnt"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        rm -rf "$dir/data-$name"
    done
done
python3 - "$out" <<'PY'
import json, sys, glob, os
for f in sorted(glob.glob(os.path.join(sys.argv[1], "seqwrite-*.json"))):
    j = json.load(open(f))["jobs"][0]["write"]
    p = j["clat_ns"]["percentile"]
    print(os.path.basename(f), f"{j['bw'] / 1024:.0f} MiB/s", f"p50 {p['50.000000'] / 1000:.0f} µs", f"p99 {p['99.000000'] / 1000:.0f} µs")
PY
