#!/usr/bin/env python3
"""Writes the block data of a .yolo boot image (its block streams, all files
in order) to stdout: the exact bytes a store keeps, for feeding other tools
(casync, zstd) in comparisons. Format: docs/format.md."""
import struct
import sys

data = open(sys.argv[1], "rb").read()
block_size, files = struct.unpack_from("<II", data, 12)
at = 24
for _ in range(files):
    (name_len,) = struct.unpack_from("<H", data, at)
    at += 2 + name_len
    (size,) = struct.unpack_from("<Q", data, at)
    at += 8 + 1 + 32
    (count,) = struct.unpack_from("<Q", data, at)
    at += 8
    ids = struct.unpack_from("<%dQ" % count, data, at)
    at += 8 * count
    total = sum(min(block_size, size - i * block_size) for i in ids)
    sys.stdout.buffer.write(data[at : at + total])
    at += total
