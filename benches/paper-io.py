#!/usr/bin/env python3
"""One run of the paper's I/O-only experiment (benches/paper-io.sh): N
recorded boot traces replayed at once, each by its own process running
benches/replay.py (each read's offset, size and order kept), under one of
the paper's policies (Figure 8):

    normal    all N at once;
    then      the first alone, then the other N-1 at once;
    prefetch  all N at once, each beside a prefetcher that reads the
              trace's blocks once in offset order (as vmtouch would);
    yolo      all N at once (the files are on a yolo-store mount).

    benches/paper-io.py POLICY FILE TRACE [FILE TRACE ...]

Prints one JSON line: each replay's completion time from the start of the
run (a VM of "then" waits for the first), in seconds. Run it inside the
slow disk's cgroup; every process it starts inherits the group.
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def prefetch(path, trace):
    """Reads each recorded range once, in offset order."""
    reads = set()
    with open(trace) as f:
        for line in f:
            fields = line.split("#")[0].split()
            if fields:
                reads.add((int(fields[0]), int(fields[1])))
    fd = os.open(path, os.O_RDONLY)
    for offset, length in sorted(reads):
        os.pread(fd, length, offset)
    os.close(fd)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--prefetch":
        prefetch(sys.argv[2], sys.argv[3])
        return
    policy, rest = sys.argv[1], sys.argv[2:]
    if policy not in ("normal", "then", "prefetch", "yolo") or not rest or len(rest) % 2:
        sys.exit(__doc__)
    vms = list(zip(rest[0::2], rest[1::2]))
    start = time.perf_counter()
    done = [None] * len(vms)

    def launch(indices):
        procs = {}
        helpers = []
        for i in indices:
            path, trace = vms[i]
            if policy == "prefetch":
                helpers.append(subprocess.Popen([sys.executable, __file__, "--prefetch", path, trace]))
            procs[i] = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "replay.py"), path, trace],
                stdout=subprocess.DEVNULL,
            )
        while procs:
            for i, p in list(procs.items()):
                if p.poll() is not None:
                    if p.returncode != 0:
                        sys.exit(f"replay of {vms[i][0]} failed")
                    done[i] = time.perf_counter() - start
                    del procs[i]
            time.sleep(0.005)
        for h in helpers:
            h.wait()

    if policy == "then":
        launch([0])
        launch(range(1, len(vms)))
    else:
        launch(range(len(vms)))
    print(json.dumps({"times": [round(t, 4) for t in done]}))


main()
