#!/usr/bin/env bash
# Empty-file creates, stats and unlinks (creates.c), one thread, through
# `datenlord mount` of each binary in turn, rounds interleaved; with the
# daemon's context switches (all threads, voluntary + involuntary) and CPU
# time over the whole run. Numbers only.
# Usage: ab.sh OUT NAME=BINARY[@MOUNT-OPTIONS]...   (env: ROUNDS=3, FILES=5000,
#        PIN=CPUS: run creates under `taskset -c CPUS`; AS_USER=NAME: run it
#        as that user (mount with -o allow_other; the mount's root is made 1777))
# e.g.   ab.sh out before=/tmp/dl-old after=/tmp/dl-new "ring=/tmp/dl-new@-o uring"
# A BINARY named nullfs is the floor (../issue6-floor/nullfs.c), started in
# the foreground with its own options: "floor=/tmp/nullfs@-s".
# (NAME: letters, digits, - and _; it is part of a pgrep pattern)
set -euo pipefail
out=$1; shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rounds=${ROUNDS:-3} files=${FILES:-5000}
mkdir -p "$out"
cc -O2 -o "$out/creates" "$here/creates.c"
{ echo "date: $(date -u +%FT%TZ)"; uname -r; nproc; uptime; } >"$out/machine.txt"
work=$(mktemp -d /tmp/dl-meta-ab.XXXXXX)
trap 'for m in "$work"/*/mnt; do umount "$m" 2>/dev/null || true; done; rm -rf "$work"' EXIT
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/{n+=$2} END{print n+0}'; }
cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }
for r in $(seq "$rounds"); do
    for spec in "$@"; do
        name=${spec%%=*} bin=${spec#*=} opts=""
        if [[ $bin == *@* ]]; then opts=${bin#*@} bin=${bin%%@*}; fi
        d=$work/$name; rm -rf "$d"; mkdir -p "$d/mnt"
        if [[ $(basename "$bin") == nullfs ]]; then
            # shellcheck disable=SC2086
            "$bin" "$d/mnt" -f $opts &
            pid=$!
            until grep -q " $d/mnt " /proc/self/mountinfo; do sleep 0.05; done
        else
            # shellcheck disable=SC2086
            "$bin" mount "$d/mnt" --data-dir "$d/data" --cores 2 --memory-size 256M --cache-size 1G $opts >/dev/null
            pid=$(pgrep -f -- "mount $d/mnt " | head -1)
        fi
        if [[ -n ${AS_USER:-} ]]; then chmod 1777 "$d/mnt"; chmod 755 "$work" "$d" "$out" "$out/creates"; fi
        s0=$(switches "$pid") c0=$(cpu_ticks "$pid")
        result=$(${PIN:+taskset -c "$PIN"} ${AS_USER:+runuser -u "$AS_USER" --} "$out/creates" "$d/mnt" "$files")
        s1=$(switches "$pid") c1=$(cpu_ticks "$pid")
        umount "$d/mnt"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        echo "{\"round\": $r, \"target\": \"$name\", \"pin\": \"${PIN:-}\", \"user\": \"${AS_USER:-root}\", \"result\": $result, \"daemon_switches_per_file\": $(( (s1 - s0) / files )), \"daemon_cpu_us_per_file\": $(( (c1 - c0) * 10000 / files ))}" | tee -a "$out/results.jsonl"
    done
done
