#!/usr/bin/env bash
# Issue 23: single-thread create + write 4 KiB + close (and stat, unlink)
# on ext4 and on DatenLord before and after, interleaved round by round
# in one run. Usage (as root):
#   bench.sh BEFORE_BIN AFTER_BIN SCRATCH OUT [ROUNDS] [FILES]
# SCRATCH must be on the ext4 file system to compare with; each round
# mounts each binary on a fresh data directory there and runs
# perf/results/issue6-mount/smallfiles.c on it, then on SCRATCH/ext4.
set -euo pipefail
before=$1 after=$2 scratch=$3 out=$4 rounds=${5:-3} files=${6:-5000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$out" "$scratch"
cc -O2 -o "$scratch/smallfiles" "$here/../issue6-mount/smallfiles.c"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "kernel: $(uname -r)"
    echo "cpus: $(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    echo "mem: $(grep MemTotal /proc/meminfo)"
    echo "scratch fs: $(findmnt -n -o FSTYPE,SOURCE,OPTIONS --target "$scratch")"
    echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"
run_dl() { # NAME BIN EXTRA...
    local name=$1 bin=$2; shift 2
    local d=$scratch/$name
    rm -rf "$d"; mkdir -p "$d/mnt"
    "$bin" mount "$d/mnt" --data-dir "$d/data" --memory-size 256M --cache-size 256M "$@" >/dev/null
    printf '%s %s ' "$name" "$(cut -d' ' -f1 /proc/loadavg)"
    "$scratch/smallfiles" "$d/mnt" "$files"
    "$bin" umount "$d/mnt" --data-dir "$d/data" >/dev/null
    rm -rf "$d"
}
for r in $(seq 1 "$rounds"); do
    echo "== round $r" >&2
    {
        rm -rf "$scratch/ext4"; mkdir -p "$scratch/ext4"
        printf 'ext4 %s ' "$(cut -d' ' -f1 /proc/loadavg)"
        "$scratch/smallfiles" "$scratch/ext4" "$files"
        run_dl before "$before"
        run_dl after "$after"
        run_dl after-interval0 "$after" --commit-interval 0
    } | tee -a "$out/raw.txt"
done
rm -rf "$scratch/ext4"
echo "raw: $out/raw.txt" >&2
