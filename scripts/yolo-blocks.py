#!/usr/bin/env python3
"""Writes the block data of a .yolo boot image (its block streams, all files
in order) to stdout: the exact bytes a store keeps, for feeding other tools
(casync, zstd) in comparisons. Format: docs/format.md. `blocks(path)` is
also used by benches/pack-sizes.py."""
import struct
import sys


def files(path):
    """Each file of a .yolo, in order: (block size, name, file size, block
    ids in stream order, its blocks' bytes in that order)."""
    data = open(path, "rb").read()
    if data[:8] != b"YOLOBOOT":
        sys.exit(f"{path}: not a .yolo boot image")
    block_size, count_files = struct.unpack_from("<II", data, 12)
    at = 24
    for _ in range(count_files):
        (name_len,) = struct.unpack_from("<H", data, at)
        name = data[at + 2 : at + 2 + name_len].decode()
        at += 2 + name_len
        (size,) = struct.unpack_from("<Q", data, at)
        at += 8 + 1 + 32
        (count,) = struct.unpack_from("<Q", data, at)
        at += 8
        ids = struct.unpack_from("<%dQ" % count, data, at)
        at += 8 * count
        blocks = []
        for i in ids:
            n = min(block_size, size - i * block_size)
            blocks.append(data[at : at + n])
            at += n
        yield block_size, name, size, ids, blocks


def blocks(path):
    """The block data of every file of a .yolo, one block at a time."""
    for *_, file_blocks in files(path):
        yield from file_blocks


if __name__ == "__main__":
    for block in blocks(sys.argv[1]):
        sys.stdout.buffer.write(block)
