#!/usr/bin/env bash
# The issue-6 mount benchmark (perf/RESULTS.md, "FUSE mount (issue 6)"):
# fio psync, 2 jobs, one SIZE file per target, on the peers that
# scripts/perf-setup-peers mounted under DIR (local ext4, DatenLord, JuiceFS),
# workload by workload across the targets; then single-threaded small files;
# then DatenLord with --cores 1 and 2 (remounted, cached O_DIRECT randread).
# No assertions: it records fio JSON in OUT for the tables.
# Usage: bench.sh DIR OUT   (env: SIZE=512M, RT=15, SF_FILES=5000, REPS=2)
set -euo pipefail
dir=$1 out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
size=${SIZE:-512M}
half=$(( $(numfmt --from=iec "$size") / 2 ))
rt=${RT:-15}
targets=(local datenlord juicefs)
metrics=${DL_METRICS:-127.0.0.1:9568}
mkdir -p "$out"

fio_run() { # NAME TARGET fio-args...
    local name=$1 t=$2; shift 2
    fio --name="$name" --filename="$dir/$t/fio.dat" --ioengine=psync --numjobs=2 \
        --group_reporting --output-format=json --output="$out/$name-$t.json" "$@"
}
scrape() { curl -s "http://$metrics/metrics" | grep -v '^#' >"$1" || true; }

for t in "${targets[@]}"; do
    echo "== $t: seqwrite" >&2
    rm -f "$dir/$t/fio.dat"
    [[ $t != datenlord ]] || scrape "$out/metrics-before-seqwrite.txt"
    fio_run seqwrite-direct "$t" --rw=write --bs=1M --direct=1 --size="$half" --offset_increment="$half"
    rm -f "$dir/$t/fio.dat"
    fio_run seqwrite-buffered "$t" --rw=write --bs=1M --direct=0 --end_fsync=1 --size="$half" --offset_increment="$half"
    [[ $t != datenlord ]] || scrape "$out/metrics-after-seqwrite.txt"
done
for t in "${targets[@]}"; do
    echo "== $t: seqread" >&2
    fio_run seqread-direct "$t" --rw=read --bs=1M --direct=1 --size="$half" --offset_increment="$half" --loops=4
    fio_run seqread-buffered "$t" --rw=read --bs=1M --direct=0 --invalidate=1 --size="$half" --offset_increment="$half"
done
for t in "${targets[@]}"; do
    echo "== $t: randread 4k O_DIRECT (after a warm-up pass)" >&2
    fio_run warm-direct "$t" --rw=read --bs=1M --direct=1 --size="$half" --offset_increment="$half"
    [[ $t != datenlord ]] || scrape "$out/metrics-before-randread-direct.txt"
    if [[ $t == datenlord ]]; then
        (sleep 5; top -H -b -n 1 -p "$(cat "$dir/dl/datenlord.pid")" | head -30 >"$out/top-H-randread-direct.txt") &
    fi
    fio_run randread-direct "$t" --rw=randread --bs=4k --direct=1 --size="$size" --time_based --runtime="$rt"
    [[ $t != datenlord ]] || scrape "$out/metrics-after-randread-direct.txt"
    wait
done
for t in "${targets[@]}"; do
    echo "== $t: randread 4k buffered, hot page cache" >&2
    fio_run warm-buffered "$t" --rw=read --bs=1M --direct=0 --invalidate=0 --size="$half" --offset_increment="$half"
    [[ $t != datenlord ]] || scrape "$out/metrics-before-randread-buffered.txt"
    fio_run randread-buffered "$t" --rw=randread --bs=4k --direct=0 --invalidate=0 --size="$size" --time_based --runtime="$rt"
    [[ $t != datenlord ]] || scrape "$out/metrics-after-randread-buffered.txt"
done
for t in "${targets[@]}"; do
    echo "== $t: small files" >&2
    [[ $t != datenlord ]] || scrape "$out/metrics-before-smallfiles.txt"
    /tmp/smallfiles "$dir/$t" "${SF_FILES:-5000}" | tee "$out/smallfiles-$t.json"
    [[ $t != datenlord ]] || scrape "$out/metrics-after-smallfiles.txt"
done
for t in "${targets[@]}"; do rm -f "$dir/$t/fio.dat"; done
