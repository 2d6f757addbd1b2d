#!/usr/bin/python3
"""Plots benches/hdd-boots.sh's CSV: boot time against contending readers
(one VM), against VMs booted at once, and against a memory hog (one VM),
for each policy the CSV has; the boot on the unthrottled disk as a line, and
the memory cgroup's page-cache refaults (dashed) beside the memory panel.
usage: hdd-boots-plot.py CSV PNG"""
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = list(csv.DictReader(open(sys.argv[1])))
panels = [
    ("contention", "random 4 KiB readers on the same disk", "One VM under I/O contention (Fig. 12)"),
    ("many", "distinct VMIs booted at once", "Several VMs at once (Fig. 11)"),
    ("memory", "MiB held by a hog in the VM's 1.5 GiB memory cgroup", "One VM under memory contention (Fig. 13)"),
]
panels = [p for p in panels if any(r["scenario"] == p[0] for r in rows)]
fast = [float(r["seconds"]) for r in rows if r["scenario"] == "fast"]
fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
for ax, (scenario, xlabel, title) in zip(axes[0], panels):
    for policy, style, color in [("normal", "o-", "C0"), ("prefetch", "^-", "C1"), ("yolo", "s-", "C2")]:
        pts = sorted((int(r["x"]), float(r["seconds"])) for r in rows
                     if r["scenario"] == scenario and r["policy"] == policy)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=policy)
    if scenario == "memory":
        # What the hog does: page-cache pages read again after eviction.
        ax2 = ax.twinx()
        for policy, color in [("normal", "C0"), ("prefetch", "C1"), ("yolo", "C2")]:
            pts = sorted((int(r["x"]), int(r["refaults"] or 0)) for r in rows
                         if r["scenario"] == scenario and r["policy"] == policy)
            if pts:
                ax2.plot([p[0] for p in pts], [p[1] for p in pts], "--", color=color, alpha=0.6)
        ax2.set_ylabel("page-cache refaults (dashed)", fontsize=9)
        ax2.set_ylim(bottom=0)
    if fast and scenario != "many":
        ax.axhline(fast[0], color="grey", linestyle=":", label="unthrottled disk")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("time to boot-complete marker (s)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle("Real boots (QEMU TCG) on the emulated HDD: 150 IOPS, 150 MB/s", fontsize=11)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
