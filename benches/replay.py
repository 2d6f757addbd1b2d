#!/usr/bin/env python3
"""Replays a boot's reads against a file: each `OFFSET LENGTH` of a trace
(as `yolo-store record` writes it), in order, with one pread each. Prints
the wall time in seconds and the bytes read.

    benches/replay.py FILE TRACE
"""
import os
import sys
import time

path, trace = sys.argv[1], sys.argv[2]
reads = []
with open(trace) as f:
    for line in f:
        line = line.split("#")[0].split()
        if line:
            reads.append((int(line[0]), int(line[1])))
fd = os.open(path, os.O_RDONLY)
start = time.perf_counter()
total = 0
for offset, length in reads:
    total += len(os.pread(fd, length, offset))
elapsed = time.perf_counter() - start
os.close(fd)
print(f"{elapsed:.4f} {total}")
