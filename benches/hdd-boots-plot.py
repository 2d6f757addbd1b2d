#!/usr/bin/python3
"""Plots benches/hdd-boots.sh's CSV: boot time against contending readers
(one VM) and against VMs booted at once, normal and through the mount.
usage: hdd-boots-plot.py CSV PNG"""
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = list(csv.DictReader(open(sys.argv[1])))
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, (scenario, xlabel, title) in zip(axes, [
        ("contention", "random 4 KiB readers on the same disk", "One VM under I/O contention (Fig. 12)"),
        ("many", "distinct VMIs booted at once", "Several VMs at once (Fig. 11)")]):
    for policy, style in [("normal", "o-"), ("yolo", "s-")]:
        pts = sorted((int(r["x"]), float(r["seconds"])) for r in rows
                     if r["scenario"] == scenario and r["policy"] == policy)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=policy)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("time to boot-complete marker (s)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle("Real boots (QEMU TCG) on the emulated HDD: 150 IOPS, 150 MB/s", fontsize=11)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
