#!/usr/bin/python3
"""Draws the I/O-only experiment's figures from benches/paper-io.sh's CSV,
like the paper's Figures 10 (one shared VMI) and 11 (distinct VMIs): time
until all N replays are done against N, one line per policy, one figure per
profile and mode; prints the ratios against yolo. The newest row of each
(profile, vmis, n, policy) counts.

    benches/paper-plot.py CSV OUT_DIR      (Debian's python3-matplotlib)
"""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

POLICIES = [("normal", "normal (all at once)"), ("then", "one then others"),
            ("prefetch", "prefetching boot"), ("yolo", "YOLO (yolo-store)")]

path, out = sys.argv[1], sys.argv[2]
rows = {}
with open(path) as f:
    for r in csv.DictReader(f):
        rows[(r["profile"], r["vmis"], int(r["n"]), r["policy"])] = r

for profile, vmis in sorted({(k[0], k[1]) for k in rows}):
    ns = sorted({k[2] for k in rows if k[:2] == (profile, vmis)})
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for policy, label in POLICIES:
        pts = [(n, float(rows[(profile, vmis, n, policy)]["max_s"]))
               for n in ns if (profile, vmis, n, policy) in rows]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("VMs booting at once (N)")
    ax.set_ylabel("time until all N replays end (s)")
    what = "distinct VMIs" if vmis == "distinct" else "one shared VMI"
    ax.set_title(f"Boot I/O replayed, {what}, {profile}")
    ax.set_xticks(ns)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(out, f"paper-io-{profile}-{vmis}.png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"{png}")
    for n in ns:
        y = rows.get((profile, vmis, n, "yolo"))
        if not y:
            continue
        ratios = []
        for policy in ("normal", "then", "prefetch"):
            r = rows.get((profile, vmis, n, policy))
            if r:
                ratios.append(f"{policy}/yolo {float(r['max_s']) / float(y['max_s']):.1f}x")
        print(f"  {profile} {vmis} N={n}: yolo {float(y['max_s']):.2f} s; " + ", ".join(ratios))
