#!/usr/bin/env python3
"""How much do packs of N distinct 4 KiB blocks compress, by zstd level?

    benches/pack-sizes.py BOOT_IMAGE.yolo ...

The distinct blocks of the boot images, in first-use order (the order an
import packs them), grouped N at a time and compressed as one zstd frame
each (raw when zstd does not shrink a group): the experiment behind the
pack size in docs/chunking.md. Needs python3-zstandard (pip zstandard).
"""
import hashlib
import importlib.util
import pathlib
import sys
import time

import zstandard

_spec = importlib.util.spec_from_file_location(
    "yolo_blocks", pathlib.Path(__file__).parent.parent / "scripts" / "yolo-blocks.py"
)
yolo_blocks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(yolo_blocks)


def main():
    seen, distinct = set(), []
    for path in sys.argv[1:]:
        for block in yolo_blocks.blocks(path):
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
