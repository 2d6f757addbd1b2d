#!/usr/bin/env python3
"""How much do packs of N distinct 4 KiB blocks compress, by zstd level?

    benches/pack-sizes.py BOOT_IMAGE.yolo ...

The distinct blocks of the boot images, in first-use order (the order an
import packs them), grouped N at a time and compressed as one zstd frame
each (raw when zstd does not shrink a group): the experiment behind the
pack size in docs/chunking.md. Needs python3-zstandard (pip zstandard).
"""
import hashlib
import struct
import sys
import time

import zstandard


def blocks(path):
    """The block data of every file of a .yolo, block by block (docs/format.md)."""
    data = open(path, "rb").read()
    if data[:8] != b"YOLOBOOT":
        sys.exit(f"{path}: not a .yolo boot image")
    block_size, files = struct.unpack_from("<II", data, 12)
    at = 24
    for _ in range(files):
        (name_len,) = struct.unpack_from("<H", data, at)
        at += 2 + name_len
        (file_size,) = struct.unpack_from("<Q", data, at)
        at += 8 + 1 + 32
        (count,) = struct.unpack_from("<Q", data, at)
        at += 8
        ids = struct.unpack_from(f"<{count}Q", data, at)
        at += 8 * count
        for block in ids:
            n = min(block_size, file_size - block * block_size)
            yield data[at : at + n]
            at += n


def main():
    seen, distinct = set(), []
    for path in sys.argv[1:]:
        for block in blocks(path):
            digest = hashlib.blake2b(block).digest()
            if digest not in seen:
                seen.add(digest)
                distinct.append(block)
    print(f"{len(distinct)} distinct blocks, {sum(map(len, distinct))} bytes")
    print(f"{'level':>5} {'pack':>5} {'bytes':>12} {'seconds':>8}")
    for level in (1, 3, 6, 9):
        compressor = zstandard.ZstdCompressor(level=level)
        for n in (1, 4, 16, 64, 256):
            start, total = time.time(), 0
            for i in range(0, len(distinct), n):
                raw = b"".join(distinct[i : i + n])
                total += min(len(compressor.compress(raw)), len(raw))
            print(f"{level:>5} {n:>5} {total:>12} {time.time() - start:>8.2f}")


if __name__ == "__main__":
    main()
