#!/usr/bin/env python3
"""Reads VMIs' boot blocks through a yolo-store mount and checks every byte.

    benches/fleet-read.py MOUNTPOINT YOLO... [--hits R]

For each boot image, every recorded block is read from MOUNTPOINT/NAME with
pread (4 KiB, in recorded order) and compared with the block in the .yolo:
any difference exits 1. With --hits R, it then reads each VMI's first 64
blocks R more times (cache hits: those chunks were just served) and prints
the p50 and p99 of one pread in microseconds as JSON.
"""
import json
import os
import struct
import sys
import time


def boot_image(path):
    """(name, [(offset, bytes)]) of a one-file .yolo."""
    data = open(path, "rb").read()
    _magic, _v, _f, bs, nfiles = struct.unpack_from("<8sHHII", data, 0)
    if nfiles != 1:
        sys.exit(f"{path}: {nfiles} files, expected 1")
    (nlen,) = struct.unpack_from("<H", data, 24)
    name = data[26 : 26 + nlen].decode()
    pos = 26 + nlen
    (fsize,) = struct.unpack_from("<Q", data, pos)
    pos += 8 + 1 + 32
    (k,) = struct.unpack_from("<Q", data, pos)
    ids = struct.unpack_from(f"<{k}Q", data, pos + 8)
    pos += 8 + 8 * k
    blocks = []
    for bid in ids:
        ln = min(bs, fsize - bid * bs)
        blocks.append((bid * bs, data[pos : pos + ln]))
        pos += ln
    return name, blocks


def main():
    args = sys.argv[1:]
    hits = 0
    if "--hits" in args:
        i = args.index("--hits")
        hits = int(args[i + 1])
        del args[i : i + 2]
    mnt, yolos = args[0], args[1:]
    lat = []
    read_bytes = 0
    for y in yolos:
        name, blocks = boot_image(y)
        fd = os.open(os.path.join(mnt, name), os.O_RDONLY)
        try:
            for off, want in blocks:
                got = os.pread(fd, len(want), off)
                read_bytes += len(got)
                if got != want:
                    print(f"{name}: bytes differ at offset {off}", file=sys.stderr)
                    sys.exit(1)
            for _ in range(hits):
                for off, want in blocks[:64]:
                    t = time.perf_counter_ns()
                    os.pread(fd, len(want), off)
                    lat.append(time.perf_counter_ns() - t)
        finally:
            os.close(fd)
    out = {"vmis": len(yolos), "bytes": read_bytes}
    if lat:
        lat.sort()
        out["hit_reads"] = len(lat)
        out["p50_us"] = lat[len(lat) // 2] / 1000
        out["p99_us"] = lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1000
    print(json.dumps(out))


if __name__ == "__main__":
    main()
