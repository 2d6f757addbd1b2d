#!/usr/bin/env python3
"""The paper's Table II for a VM's backing file, before and after handoff:
QEMU (no guest; reads go through QEMU's block layer with HMP qemu-io, as a
guest's would through virtio) reads its overlay's backing file
sequentially (the whole virtual disk, 64 MiB requests) and randomly (4 KiB
at random offsets), with the page cache dropped first, in three arms:

  plain    the backing file opened directly (the baseline),
  mount    the backing file on the yolo-store mount,
  handoff  started on the mount, then `yolo-store handoff` to the plain file.

usage: handoff.py BIN IMAGES MOUNTPOINT VMI WORKDIR ROUNDS RANDOM_READS
Prints one CSV line per (round, arm, pattern): seconds, MB/s or IOPS."""
import json, os, random, socket, subprocess, sys, time

bin_, images, mnt, vmi, work, rounds, nrand = sys.argv[1:8]
rounds, nrand = int(rounds), int(nrand)


class Qemu:
    def __init__(self, backing):
        overlay = f"{work}/overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, overlay], check=True)
        self.sock = f"{work}/qmp.sock"
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        blockdev = [
            f"driver=file,node-name=base-file,filename={backing},read-only=on",
            "driver=qcow2,node-name=base,file=base-file,read-only=on",
            f"driver=file,node-name=top-file,filename={overlay}",
            "driver=qcow2,node-name=top,file=top-file,backing=base",
        ]
        args = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S",
                "-qmp", f"unix:{self.sock},server=on,wait=off"]
        for b in blockdev:
            args += ["-blockdev", b]
        self.proc = subprocess.Popen(args, stdout=open(f"{work}/qemu.log", "w"), stdin=subprocess.DEVNULL)
        for _ in range(500):
            if os.path.exists(self.sock):
                break
            time.sleep(0.02)
        self.connect()

    def connect(self):
        self.s = socket.socket(socket.AF_UNIX)
        for _ in range(100):
            try:
                self.s.connect(self.sock)
                break
            except OSError:
                time.sleep(0.05)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.ex("qmp_capabilities")

    def disconnect(self):
        self.f.close()
        self.s.close()

    def ex(self, cmd, args=None):
        self.f.write(json.dumps({"execute": cmd, "arguments": args or {}}) + "\n")
        self.f.flush()
        while True:
            m = json.loads(self.f.readline())
            if "return" in m or "error" in m:
                return m

    def io(self, command):
        self.ex("human-monitor-command", {"command-line": f'qemu-io top "{command}"'})

    def size(self):
        for n in self.ex("query-named-block-nodes", {"flat": True})["return"]:
            if n["node-name"] == "top":
                return n["image"]["virtual-size"]

    def quit(self):
        self.ex("quit")
        self.proc.wait()


def drop():
    subprocess.run(["sync"])
    open("/proc/sys/vm/drop_caches", "w").write("3\n")


def measure(q, round_, arm):
    size = q.size()
    drop()
    t = time.perf_counter()
    step = 64 << 20
    for off in range(0, size, step):
        q.io(f"read -q {off} {min(step, size - off)}")
    seq = time.perf_counter() - t
    print(f"{round_},{arm},seq,{seq:.3f},{size / seq / 1e6:.1f}", flush=True)
    rng = random.Random(round_)
    offs = [rng.randrange(size // 4096) * 4096 for _ in range(nrand)]
    drop()
    t = time.perf_counter()
    for off in offs:
        q.io(f"read -q {off} 4096")
    rnd = time.perf_counter() - t
    print(f"{round_},{arm},random,{rnd:.3f},{nrand / rnd:.0f}", flush=True)


print("round,arm,pattern,seconds,MB/s or IOPS")
for r in range(rounds):
    for arm in ["plain", "mount", "handoff"]:
        q = Qemu(f"{images}/{vmi}" if arm == "plain" else f"{mnt}/{vmi}")
        if arm == "handoff":
            q.disconnect()
            subprocess.run([bin_, "handoff", "--qmp", q.sock, "--images", images], check=True, stdout=subprocess.DEVNULL)
            q.connect()
        measure(q, r, arm)
        q.quit()
