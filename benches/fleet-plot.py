#!/usr/bin/env python3
"""Plots each cost of benches/fleet.sh against N: fleet-plot.py CSV PNG."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
n = [int(r["n"]) for r in rows]
panels = [
    ("import per VMI (ms)", ["import_ms_per_vmi", "probe_import_ms_per_vmi", "import_cpu_ms_per_vmi", "probe_import_cpu_ms_per_vmi"]),
    ("seconds", ["ls_s", "stats_s", "verify_s", "ls_cpu_s", "stats_cpu_s"]),
    ("mount to every boot image usable (s)", ["mount_first_s", "mount_restart_s"]),
    ("seconds (the removed 10%)", ["import_rm_set_s", "rm_s", "gc_s"]),
    ("daemon RSS (MB)", ["rss_idle_mb", "rss_idle_restart_mb", "rss_served_mb", "cache_mb"]),
    ("cache-hit pread (us)", ["hit_p50_us", "hit_p99_us"]),
    ("store bytes", ["boot_bytes", "store_du_bytes", "pack_bytes"]),
]
fig, axes = plt.subplots(2, 4, figsize=(18, 8))
for ax, (title, cols) in zip(axes.flat, panels):
    for c in [c for c in cols if c in rows[0]]:
        ax.plot(n, [float(r[c]) for r in rows], marker="o", label=c)
    ax.set_xscale("log")
    if title.startswith(("store bytes", "mount")):
        ax.set_yscale("log")
    ax.set_xlabel("VMIs (N)")
    ax.set_title(title)
    ax.legend(fontsize=7)
axes.flat[-1].axis("off")
fig.suptitle("yolo-store at fleet scale (benches/fleet.sh)")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
