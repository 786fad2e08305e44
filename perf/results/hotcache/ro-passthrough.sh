#!/usr/bin/env bash
# Two fio jobs doing 4 KiB random reads of one cached file: ext4 against a
# `-o passthrough` mount whose file is on its local copy, first writable,
# then remounted read-only (same mount, same copy). The kernel marks a
# passthrough file's atime stale on every read (an atomic on the shared
# FUSE inode) unless the superblock is read-only; this shows its cost.
# Usage: ro-passthrough.sh DIR OUT BIN   (env: SIZE=256M RT=6 ROUNDS=3)
set -euo pipefail
dir=$(realpath -m "$1") out=$2 bin=$3
size=${SIZE:-256M} rt=${RT:-6} rounds=${ROUNDS:-3} metrics=127.0.0.1:9581
mkdir -p "$dir/mnt" "$dir/local" "$out"
cleanup() {
    set +e
    rm -f "$dir/local/fio.dat"
    if mountpoint -q "$dir/mnt"; then
        pid=$(cat "$dir/dl/datenlord.pid" 2>/dev/null)
        umount "$dir/mnt" || umount -l "$dir/mnt"
        for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "${dir:?}/dl"
}
trap cleanup EXIT
{ echo "date: $(date -u +%FT%TZ)"; uname -r; nproc; grep -m1 "model name" /proc/cpuinfo; uptime
  echo "bin: $bin SIZE=$size RT=$rt ROUNDS=$rounds"; } >"$out/machine.txt"
rm -rf "$dir/dl"
"$bin" mount "$dir/mnt" --data-dir "$dir/dl" --memory-size 1G --cache-size 512M \
    -o passthrough --passthrough-size 4G --metrics-addr "$metrics"
for f in "$dir/mnt/fio.dat" "$dir/local/fio.dat"; do
    fio --name=create --filename="$f" --size="$size" --rw=write --bs=1M --direct=1 --output=/dev/null
done
# Two read-only opens and closes: the daemon copies the file.
cat "$dir/mnt/fio.dat" >/dev/null; cat "$dir/mnt/fio.dat" >/dev/null
for _ in $(seq 600); do
    curl -s "http://$metrics/metrics" | grep -q '^datenlord_local_copies_made_total 1' && break
    sleep 0.1
done
curl -s "http://$metrics/metrics" | grep '^datenlord_local_copies' >"$out/copy.txt"
grep -q '^datenlord_local_copies_made_total 1' "$out/copy.txt" || { echo "no local copy" >&2; exit 1; }
iops() { # FILE -> IOPS of 2 jobs, 4 KiB random reads
    cat "$1" >/dev/null
    fio --name=r --filename="$1" --size="$size" --ioengine=psync --invalidate=0 --rw=randread \
        --bs=4k --numjobs=2 --group_reporting --time_based --runtime="$rt" --output-format=json |
        python3 -c "import json,sys; print(round(json.load(sys.stdin)['jobs'][0]['read']['iops']))"
}
for mode in rw ro; do
    if [[ $mode == ro ]]; then
        # Read-only superblock, same mount and copy (mount(8) would run the
        # mount helper; MS_REMOUNT|MS_RDONLY directly).
        python3 -c "import ctypes; l=ctypes.CDLL(None, use_errno=True); r=l.mount(None, b'$dir/mnt', None, 32|1|2|4, None); assert r==0, ctypes.get_errno()"
    fi
    findmnt -no OPTIONS "$dir/mnt" | sed "s/^/$mode mount: /" >>"$out/machine.txt"
    for r in $(seq "$rounds"); do
        l=$(iops "$dir/local/fio.dat") d=$(iops "$dir/mnt/fio.dat")
        echo "{\"mode\": \"$mode\", \"round\": $r, \"ext4_iops\": $l, \"passthrough_iops\": $d, \"ratio\": $(python3 -c "print(round($d/$l, 3))")}" | tee -a "$out/results.jsonl"
    done
done
curl -s "http://$metrics/metrics" | grep 'requests_total{op="read"}' >"$out/daemon-reads.txt"
