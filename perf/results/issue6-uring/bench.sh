#!/usr/bin/env bash
# FUSE over io_uring against the classic /dev/fuse request loops: one
# datenlord binary mounted with -o uring and -o no_uring in turn, rounds
# interleaved so machine load falls on both alike. Per round and mode:
#   1. metadata (mount with entry_timeout=60): metaloop, one thread: empty
#      creates, stats that each reach the daemon (one GETATTR), unlinks;
#      then issue 6's smallfiles (create + write 4 KiB + close, stat twice,
#      unlink) with SMALLFILES files;
#   2. data (default options): fio psync 4 KiB O_DIRECT randread of a
#      cached 256 MiB file, 1 job and 2 jobs.
# Needs root (sets /sys/module/fuse/parameters/enable_uring to Y and puts
# the old value back).
# Usage: bench.sh BIN DIR OUT   env: ROUNDS (2), RT (10 s), FILES (10000),
#   STAT_S (5 s), SIZE (256M), CORES (2), SMALLFILES (2000), BASE (another
#   binary, e.g. the commit before the ring, measured as mode "base" with
#   its own defaults)
set -euo pipefail
bin=$1 dir=$2 out=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
size=${SIZE:-256M} rt=${RT:-10} rounds=${ROUNDS:-2} files=${FILES:-10000}
stat_s=${STAT_S:-5} cores=${CORES:-2}
param=/sys/module/fuse/parameters/enable_uring
old=$(cat "$param")
echo Y >"$param"
trap 'echo "$old" >"$param"' EXIT
mkdir -p "$dir" "$out"
cc -O2 -o "$dir/metaloop" "$here/metaloop.c"
cc -O2 -o "$dir/smallfiles" "$here/../issue6-mount/smallfiles.c"
mnt=$dir/mnt
mkdir -p "$mnt"
up() { # MODE OPTIONS
    rm -rf "$dir/data"
    local b=$bin opts="$1${2:+,$2}"
    if [[ $1 == base ]]; then b=$BASE opts=$2; fi
    "$b" mount "$mnt" --data-dir "$dir/data" --memory-size 1G --cache-size 512M \
        --cores "$cores" --metrics-addr 127.0.0.1:9577 ${opts:+-o "$opts"}
}
down() { # NAME
    local pid
    pid=$(cat "$dir/data/datenlord.pid")
    curl -s http://127.0.0.1:9577/metrics | grep -v '^#' >"$out/metrics-$1.txt" || true
    umount "$mnt"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
common=(--filename="$mnt/fio.dat" --ioengine=psync --group_reporting --output-format=json)
half=$(( $(numfmt --from=iec "$size") / 2 ))
{ echo "date: $(date -u +%FT%TZ)"; uname -r; nproc; uptime; "$bin" --version || true; } >"$out/machine.txt"
for round in $(seq "$rounds"); do
    for mode in ${BASE:+base} no_uring uring; do
        echo "== round $round $mode: metadata" >&2
        up "$mode" entry_timeout=60
        "$dir/metaloop" "$mnt" "$files" "$stat_s" >"$out/meta-$mode-r$round.json"
        "$dir/smallfiles" "$mnt" "${SMALLFILES:-2000}" >"$out/smallfiles-$mode-r$round.json"
        down "meta-$mode-r$round"
        echo "== round $round $mode: randread" >&2
        up "$mode" ""
        fio --name=create "${common[@]}" --numjobs=2 --rw=write --bs=1M --direct=1 --size="$half" \
            --offset_increment="$half" --output=/dev/null
        fio --name=warm "${common[@]}" --numjobs=2 --rw=read --bs=1M --direct=1 --size="$half" \
            --offset_increment="$half" --output=/dev/null
        for jobs in 1 2; do
            fio --name=randread "${common[@]}" --numjobs="$jobs" --rw=randread --bs=4k --direct=1 \
                --size="$size" --time_based --runtime="$rt" \
                --output="$out/randread-$mode-jobs$jobs-r$round.json"
        done
        down "data-$mode-r$round"
    done
done
rm -rf "$dir/data"
python3 "$here/summarize.py" "$out" | tee "$out/summary.md"
