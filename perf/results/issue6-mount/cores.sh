#!/usr/bin/env bash
# DatenLord mounted with --cores 1, then 2 (alternating, REPS times each):
# cached 4 KiB O_DIRECT randread, fio psync, 2 jobs, after a warm-up pass.
# Remounts DIR/datenlord through scripts/perf-setup-peers (DL_* env kept).
# Usage: cores.sh DIR OUT   (env: SIZE=512M, RT=15, REPS=2)
set -euo pipefail
dir=$1 out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
size=${SIZE:-512M}
half=$(( $(numfmt --from=iec "$size") / 2 ))
rt=${RT:-15}
metrics=${DL_METRICS:-127.0.0.1:9568}
f=$dir/datenlord/fio-cores.dat
remount() {
    local pid
    pid=$(cat "$dir/dl/datenlord.pid")
    umount "$dir/datenlord"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    DL_CORES=$1 "$repo/scripts/perf-setup-peers" up "$dir" >/dev/null
}
common=(--filename="$f" --ioengine=psync --numjobs=2 --group_reporting --output-format=json)
fio --name=create "${common[@]}" --rw=write --bs=1M --direct=1 --size="$half" --offset_increment="$half" --output=/dev/null
for rep in $(seq "${REPS:-2}"); do
    for c in 1 2; do
        echo "== cores $c, rep $rep" >&2
        remount "$c"
        fio --name=warm "${common[@]}" --rw=read --bs=1M --direct=1 --size="$half" --offset_increment="$half" --output=/dev/null
        (sleep 5; top -H -b -n 1 -p "$(cat "$dir/dl/datenlord.pid")" | head -25 >"$out/top-H-cores$c-rep$rep.txt") &
        fio --name=randread-direct-cores$c "${common[@]}" --rw=randread --bs=4k --direct=1 --size="$size" \
            --time_based --runtime="$rt" --output="$out/randread-direct-cores$c-rep$rep.json"
        wait
        curl -s "http://$metrics/metrics" | grep -v '^#' >"$out/metrics-cores$c-rep$rep.txt" || true
    done
done
rm -f "$f"
