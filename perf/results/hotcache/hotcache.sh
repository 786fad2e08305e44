#!/usr/bin/env bash
# Hot-page-cache reads: ext4 against `datenlord mount`, side by side.
#
# Targets (one SIZE file each, all on the same disk):
#   local     a directory on ext4; page cache filled by one buffered 1 MiB
#             sequential pass (readahead: large folios, up to 2 MiB)
#   local4k   the same on ext4, but the page cache filled by a 4 KiB random
#             pass with FADV_RANDOM (order-0 folios, 4 KiB): a control, ext4
#             with the page-cache layout FUSE gets on this kernel
#   datenlord `datenlord mount` (BIN), filled by one buffered 1 MiB pass
#   passthrough  (TARGETS includes it) a second mount with -o passthrough:
#             the file is read twice, then the daemon's local copy of it
#             is what the kernel reads (FUSE passthrough; the script waits
#             for the copy before the rounds)
# Workloads (fio psync, buffered, --invalidate=0, time-based RT s):
#   randread 4 KiB and sequential read 1 MiB, with 1 and with 2 jobs.
# Every round runs each workload on every target back to back, the target
# order rotating per round, so machine load falls on all alike. Each run
# follows its own warm-up pass (see run()); page-cache residency (fincore)
# is logged before every run, folio sizes (folios.py) after the first
# warm-up and at the end, the daemon's FUSE requests (metrics) around every
# DatenLord run and around all rounds. PROFILE=1 adds `perf record -g` of fio
# (cpu-clock: this VM has no hardware counters) per target and workload.
#
# Usage: hotcache.sh DIR OUT BIN
#   env: SIZE (256M), RT (8), ROUNDS (5), JOBS ("1 2"), PROFILE (1),
#        TARGETS ("local local4k datenlord"; add passthrough)
set -euo pipefail
dir=$(realpath -m "$1") out=$2 bin=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
size=${SIZE:-256M} rt=${RT:-8} rounds=${ROUNDS:-5} jobs_list=${JOBS:-1 2}
metrics=127.0.0.1:9578 metrics2=127.0.0.1:9579
read -r -a targets <<<"${TARGETS:-local local4k datenlord}"
mkdir -p "$dir/local" "$dir/local4k" "$dir/mnt" "$dir/mnt2" "$out"
file() { case $1 in datenlord) echo "$dir/mnt/fio.dat" ;; passthrough) echo "$dir/mnt2/fio.dat" ;; *) echo "$dir/$1/fio.dat" ;; esac; }
has() { [[ " ${targets[*]} " == *" $1 "* ]]; }
# A daemon's FUSE request counts, one "op=count" per op that was asked
# (the passthrough mount's with `reads 2`).
reads() { local m=$metrics; [[ ${1:-} != 2 ]] || m=$metrics2; curl -s "http://$m/metrics" | sed -n 's/^datenlord_fuse_requests_total{op="\([a-z_]*\)"} \([0-9]*\)$/\1=\2/p' | grep -v '=0$' | tr '\n' ' '; }

cleanup() {
    set +e
    rm -f "$dir/local/fio.dat" "$dir/local4k/fio.dat"
    local m pid
    for m in mnt:dl mnt2:dl2; do
        if mountpoint -q "$dir/${m%:*}"; then
            rm -f "$dir/${m%:*}/fio.dat"
            pid=$(cat "$dir/${m#*:}/datenlord.pid" 2>/dev/null)
            umount "$dir/${m%:*}" || umount -l "$dir/${m%:*}"
            for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -rf "${dir:?}/${m#*:}"
    done
}
trap cleanup EXIT

{
    echo "date: $(date -u +%FT%TZ)"; uname -r; nproc; grep -m1 "model name" /proc/cpuinfo
    free -m; uptime; findmnt -no SOURCE,FSTYPE,OPTIONS -T "$dir/local"
    echo "bin: $bin ($("$bin" --version 2>/dev/null || true))"
    echo "SIZE=$size RT=$rt ROUNDS=$rounds JOBS=$jobs_list"
} >"$out/machine.txt"

rm -rf "$dir/dl" "$dir/dl2"
"$bin" mount "$dir/mnt" --data-dir "$dir/dl" --memory-size 1G --cache-size 512M --metrics-addr "$metrics"
if has passthrough; then
    "$bin" mount "$dir/mnt2" --data-dir "$dir/dl2" --memory-size 1G --cache-size 512M \
        -o passthrough --passthrough-size 4G --metrics-addr "$metrics2"
    echo "passthrough mount: $(findmnt -no OPTIONS "$dir/mnt2")" >>"$out/machine.txt"
fi
{
    findmnt -no SOURCE,FSTYPE,OPTIONS "$dir/mnt"
    bdi=$(mountpoint -d "$dir/mnt"); echo "fuse bdi $bdi read_ahead_kb $(cat /sys/class/bdi/$bdi/read_ahead_kb)"
    disk=$(mountpoint -d "$(findmnt -no TARGET -T "$dir/local")"); echo "ext4 bdi $disk read_ahead_kb $(cat /sys/class/bdi/$disk/read_ahead_kb)"
    grep -m1 -A2 "FUSE INIT" "$dir/dl/datenlord.log" | sed 's/\x1b\[[0-9;]*m//g'
} >>"$out/machine.txt"

fio_common=(--ioengine=psync --direct=0 --invalidate=0 --size="$size" --group_reporting)
# One buffered pass over the file: 1 MiB sequential (local, datenlord), or
# 4 KiB random with FADV_RANDOM for local4k (no readahead: order-0 folios).
warm() {
    local f
    f=$(file "$1")
    if [[ $1 == local4k ]]; then
        fio --name=warm --filename="$f" "${fio_common[@]}" --rw=randread --bs=4k --fadvise_hint=1 --output=/dev/null
    else
        fio --name=warm --filename="$f" "${fio_common[@]}" --rw=read --bs=1M --output=/dev/null
    fi
}
for t in "${targets[@]}"; do
    f=$(file "$t")
    fio --name=create --filename="$f" "${fio_common[@]}" --rw=write --bs=1M --direct=1 --output=/dev/null
    warm "$t"
    if [[ $t == passthrough ]]; then
        # A second read-only open and close: the daemon copies the file.
        warm "$t"
        for _ in $(seq 600); do
            curl -s "http://$metrics2/metrics" | grep -q '^datenlord_local_copies_made_total 1' && break
            sleep 0.1
        done
        curl -s "http://$metrics2/metrics" | grep '^datenlord_local_copies' >"$out/passthrough-copy.txt"
        grep -q '^datenlord_local_copies_made_total 1' "$out/passthrough-copy.txt" ||
            { echo "no local copy made on the passthrough mount" >&2; exit 1; }
        # The copy is what is read from now on: fill its page cache.
        warm "$t"
    fi
    { fincore "$f"; python3 "$here/folios.py" "$f"; } >"$out/folios-after-warmup-$t.txt"
done
echo "daemon FUSE requests before the rounds: $(reads)" >"$out/daemon-reads.txt"
! has passthrough || echo "passthrough daemon before the rounds: $(reads 2)" >>"$out/daemon-reads.txt"

run() { # TARGET ROUND WORKLOAD JOBS
    local t=$1 r=$2 wl=$3 j=$4 f args
    f=$(file "$t")
    case $wl in
        randread4k) args=(--rw=randread --bs=4k) ;;
        seqread1m) args=(--rw=read --bs=1M) ;;
    esac
    # Idle page cache does not stay: this VM runs DAMON proactive reclaim
    # (kdamond, paddr, action pageout), which pages out folios of a file
    # left idle while the other targets run. So every run starts with a
    # warm-up pass (refilling what was paged out) and logs the resident
    # bytes, the kernel's drop_caches count, and for DatenLord the FUSE
    # reads the daemon answered during the measured run.
    warm "$t"
    local before after which=1
    [[ $t != passthrough ]] || which=2
    before=$(reads $which | tr ' ' '\n' | grep -E '^(read|getattr)=' | tr '\n' ' ')
    echo "$(date -u +%T) r$r $wl j$j $t resident=$(fincore -nbo RES "$f") $(grep drop_pagecache /proc/vmstat)" >>"$out/fincore.log"
    fio --name="$wl" --filename="$f" "${fio_common[@]}" "${args[@]}" --numjobs="$j" \
        --time_based --runtime="$rt" --output-format=json --output="$out/$wl-j$j-$t-r$r.json"
    after=$(reads $which | tr ' ' '\n' | grep -E '^(read|getattr)=' | tr '\n' ' ')
    [[ $t != datenlord && $t != passthrough ]] || echo "    daemon during the run: before: $before after: $after" >>"$out/fincore.log"
}
for r in $(seq "$rounds"); do
    shift=$(( (r - 1) % ${#targets[@]} ))
    order=("${targets[@]:$shift}" "${targets[@]:0:$shift}")
    for j in $jobs_list; do
        for wl in randread4k seqread1m; do
            for t in "${order[@]}"; do
                echo "== round $r $wl jobs $j $t" >&2
                run "$t" "$r" "$wl" "$j"
            done
        done
    done
done
echo "daemon FUSE requests after the rounds: $(reads)" >>"$out/daemon-reads.txt"
! has passthrough || echo "passthrough daemon after the rounds: $(reads 2)" >>"$out/daemon-reads.txt"
for t in "${targets[@]}"; do
    f=$(file "$t")
    { fincore "$f"; python3 "$here/folios.py" "$f"; } >"$out/folios-end-$t.txt"
done

if [[ ${PROFILE:-1} == 1 ]]; then
    for wl in randread4k seqread1m; do
        case $wl in
            randread4k) args=(--rw=randread --bs=4k) ;;
            seqread1m) args=(--rw=read --bs=1M) ;;
        esac
        for t in "${targets[@]}"; do
            warm "$t"
            perf record -q -e cpu-clock -F 4999 -g -o "$dir/perf.data" -- \
                fio --name="$wl" --filename="$(file "$t")" "${fio_common[@]}" "${args[@]}" \
                --numjobs=1 --time_based --runtime=5 --output=/dev/null 2>/dev/null
            # (sed, not head: under pipefail a closed pipe would end the script)
            perf report -i "$dir/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
                grep -v -e '^#' -e '^$' | sed -n 1,40p >"$out/profile-$wl-$t.txt"
            rm -f "$dir/perf.data"
        done
    done
fi

python3 "$here/summary.py" "$out" | tee "$out/summary.md"
