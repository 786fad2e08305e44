#!/usr/bin/env python3
"""Page-cache folio sizes of a file, read back through the page tables.

Maps FILE read-only, touches every page (so the cached folio is mapped),
turns each virtual page into a PFN via /proc/self/pagemap and reads the
page's flags from /proc/kpageflags (root only). Prints how many bytes of
the file sit in folios of each size (a compound head followed by its
tails is one folio; a page with neither flag is an order-0 folio).
Usage: folios.py FILE
"""
import mmap
import os
import struct
import sys
from collections import Counter

KPF_COMPOUND_HEAD = 1 << 15
KPF_COMPOUND_TAIL = 1 << 16
PFN_MASK = (1 << 55) - 1
PRESENT = 1 << 63
PAGE = os.sysconf("SC_PAGE_SIZE")


def main(path):
    size = os.path.getsize(path)
    npages = size // PAGE
    fd = os.open(path, os.O_RDONLY)
    m = mmap.mmap(fd, npages * PAGE, prot=mmap.PROT_READ)
    m.madvise(mmap.MADV_RANDOM)
    for i in range(npages):
        m[i * PAGE]
    # A read-only mmap object does not give its address: find it in maps.
    start = None
    with open("/proc/self/maps") as maps:
        st = os.fstat(fd)
        for line in maps:
            f = line.split()
            if len(f) >= 6 and int(f[4]) == st.st_ino and f[5] == os.path.realpath(path):
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                if hi - lo == npages * PAGE:
                    start = lo
    if start is None:
        sys.exit("mapping not found in /proc/self/maps")
    sizes = Counter()
    absent = 0
    with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf:
        pm.seek(start // PAGE * 8)
        entries = struct.unpack(f"{npages}Q", pm.read(npages * 8))
        run = 0
        for e in entries:
            if not e & PRESENT:
                absent += 1
                if run:
                    sizes[run] += 1
                    run = 0
                continue
            kf.seek((e & PFN_MASK) * 8)
            (flags,) = struct.unpack("Q", kf.read(8))
            if flags & KPF_COMPOUND_TAIL and run:
                run += 1
                continue
            if run:
                sizes[run] += 1
            run = 1 if flags & KPF_COMPOUND_HEAD else 0
            if not run:
                sizes[1] += 1
        if run:
            sizes[run] += 1
    m.close()
    os.close(fd)
    print(f"{path}: {npages} pages, {absent} not present")
    for pages, n in sorted(sizes.items()):
        print(f"  folio {pages * PAGE // 1024:>6} KiB: {n:>7} folios, {pages * n * PAGE / size:6.1%} of the file")


if __name__ == "__main__":
    main(sys.argv[1])
