"""Plots benches/soak/soak.csv (minute,node,rss_kib,fds,queued,taken) as
three panels: resident memory, open files and queued copies per node."""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
rows = defaultdict(list)
with open(src, newline="") as f:
    for r in csv.DictReader(f):
        rows[r["node"]].append(r)

fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
panels = [
    ("rss_kib", "resident memory (MiB)", lambda v: int(v) / 1024),
    ("fds", "open files", int),
    ("queued", "queued copies", int),
]
for ax, (key, label, conv) in zip(axes, panels):
    for node, rs in sorted(rows.items()):
        ax.plot([float(r["minute"]) for r in rs], [conv(r[key]) for r in rs], marker=".", label=node)
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
axes[0].set_ylim(bottom=0)
axes[1].set_ylim(bottom=0)
axes[0].legend(loc="lower right")
axes[-1].set_xlabel("minute")
fig.suptitle("sitrep soak: 200 reports/s through region → hub → authority")
fig.tight_layout()
fig.savefig(dst, dpi=100)
