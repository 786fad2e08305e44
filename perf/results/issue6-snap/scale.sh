#!/usr/bin/env bash
# Metadata rates as a namespace grows: in one `datenlord mount` per binary,
# creates.c runs for SIZES files in turn (each run leaves nothing behind,
# but the metadata log and snapshots keep growing with what was created),
# binaries interleaved per round. Numbers only.
# Usage: scale.sh OUT NAME=BINARY[@MOUNT-OPTIONS]...
#        (env: ROUNDS=2, SIZES="10000 100000 300000", PIN=CPUS for taskset)
set -euo pipefail
out=$1; shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rounds=${ROUNDS:-2} sizes=${SIZES:-10000 100000 300000}
mkdir -p "$out"
cc -O2 -o "$out/creates" "$here/../issue6-meta/creates.c"
{ echo "date: $(date -u +%FT%TZ)"; uname -r; nproc; uptime; } >"$out/machine.txt"
work=$(mktemp -d /tmp/dl-scale.XXXXXX)
trap 'for m in "$work"/*/mnt; do umount "$m" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for r in $(seq "$rounds"); do
    for spec in "$@"; do
        name=${spec%%=*} bin=${spec#*=} opts=""
        if [[ $bin == *@* ]]; then opts=${bin#*@} bin=${bin%%@*}; fi
        d=$work/$name; rm -rf "$d"; mkdir -p "$d/mnt"
        # shellcheck disable=SC2086
        "$bin" mount "$d/mnt" --data-dir "$d/data" --cores 2 --memory-size 256M --cache-size 1G $opts >/dev/null
        pid=$(pgrep -f -- "mount $d/mnt " | head -1)
        for n in $sizes; do
            result=$(${PIN:+taskset -c "$PIN"} "$out/creates" "$d/mnt" "$n")
            echo "{\"round\": $r, \"target\": \"$name\", \"pin\": \"${PIN:-}\", \"result\": $result}" | tee -a "$out/results.jsonl"
        done
        umount "$d/mnt"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    done
done
