#!/usr/bin/env bash
# Write-back journal A/B: through `datenlord mount` of each binary in turn,
# rounds interleaved, one thread:
#   smallfiles: create (O_EXCL) + write 4 KiB + close, FILES files
#               (../issue6-small/smallfiles.c; each close makes the block
#               durable in the journal and syncs the metadata log);
#   seqwrite:   dd 1 MiB writes of SEQ_MIB MiB to a new file + fsync
#               (conv=fsync), so the journal sees full blocks.
# Usage: ab.sh OUT NAME=BINARY[@MOUNT-OPTIONS]...
#        (env: ROUNDS=3, FILES=3000, SEQ_MIB=512)
# The data directory (journal included) is on the root file system.
set -euo pipefail
out=$1; shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rounds=${ROUNDS:-3} files=${FILES:-3000} seq_mib=${SEQ_MIB:-512}
mkdir -p "$out"
cc -O2 -o "$out/smallfiles" "$here/../issue6-small/smallfiles.c"
{ echo "date: $(date -u +%FT%TZ)"; uname -r; nproc; uptime; df -T /var/tmp | tail -1; } >"$out/machine.txt"
work=$(mktemp -d /var/tmp/dl-seg-ab.XXXXXX)
trap 'for m in "$work"/*/mnt; do umount "$m" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for r in $(seq "$rounds"); do
    for spec in "$@"; do
        name=${spec%%=*} bin=${spec#*=} opts=""
        if [[ $bin == *@* ]]; then opts=${bin#*@} bin=${bin%%@*}; fi
        d=$work/$name; rm -rf "$d"; mkdir -p "$d/mnt"
        # shellcheck disable=SC2086
        "$bin" mount "$d/mnt" --data-dir "$d/data" --cores 2 --memory-size 256M --cache-size 1G $opts >/dev/null
        pid=$(pgrep -f -- "mount $d/mnt " | head -1)
        small=$("$out/smallfiles" "$d/mnt" "$files")
        t0=$(date +%s.%N)
        dd if=/dev/zero of="$d/mnt/seq" bs=1M count="$seq_mib" conv=fsync status=none
        t1=$(date +%s.%N)
        umount "$d/mnt"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        mibs=$(echo "$seq_mib / ($t1 - $t0)" | bc -l)
        printf '{"round": %d, "target": "%s", "smallfiles": %s, "seqwrite_fsync_mib_per_s": %.0f}\n' \
            "$r" "$name" "$small" "$mibs" | tee -a "$out/results.jsonl"
    done
done
