#!/usr/bin/env python3
"""Turns an strace log into a yolo-store read trace.

    strace -f -y -s 0 -e trace=pread64,preadv,preadv2 -o LOG qemu-system-x86_64 ...
    scripts/strace-to-trace.py LOG /abs/path/to/base.qcow2 > base.trace

Keeps the reads of the given file (strace -y prints each fd's path), in the
order strace logged them, as `OFFSET LENGTH` with LENGTH the bytes actually
returned. Unfinished/resumed syscall pairs (several threads) are joined.
"""
import re
import sys

log, target = sys.argv[1], sys.argv[2]
call = re.compile(r"^(?:\d+\s+)?(pread64|preadv2?)\((\d+)<([^>]*)>, (.*)")
resumed = re.compile(r"^(\d+)\s+<\.\.\. (pread64|preadv2?) resumed>(.*)")
pending = {}  # pid -> text of the unfinished call


def emit(name, path, rest):
    if path != target:
        return
    m = re.search(r"= (-?\d+)", rest)
    if not m or int(m.group(1)) <= 0:
        return
    got = int(m.group(1))
    args = rest[: m.start()]
    if name == "pread64":
        offset = int(re.search(r", (\d+)\)\s*$", args).group(1))
    else:  # preadv(fd, iov, iovcnt, offset[, flags])
        tail = re.search(r"\], \d+, (\d+)(?:, \w+)?\)\s*$", args)
        offset = int(tail.group(1))
    print(offset, got)


print(f"# reads of {target} from {log}")
with open(log, errors="replace") as f:
    for line in f:
        line = line.rstrip("\n")
        pid = line.split(None, 1)[0] if line[:1].isdigit() else ""
        if "<unfinished ...>" in line:
            m = call.match(line)
            if m:
                pending[pid] = (m.group(1), m.group(3), m.group(4).replace("<unfinished ...>", ""))
            continue
        r = resumed.match(line)
        if r:
            if r.group(1) in pending:
                name, path, head = pending.pop(r.group(1))
                emit(name, path, head + r.group(3))
            continue
        m = call.match(line)
        if m:
            emit(m.group(1), m.group(3), m.group(4))
