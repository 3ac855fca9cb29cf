"""Gap against table size for both methods, from ``benchmarks.disruption --json`` reports.

    .venv/bin/pip install matplotlib
    .venv/bin/python -m benchmarks.plot_scale OUT.png REPORT.json [REPORT.json ...]

Left: median longest gap against flows (reports with ``conntrack`` 0); right: against
conntrack entries (reports' ``conntrack``, at their smallest flow count).  Each point is one
(report, N) median; error bars span min..max of the runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def points(reports: list[dict[str, Any]], method: str, by: str, key: str = "gap_ms"
           ) -> list[tuple[float, float, float, float]]:
    """(x, median, min, max) of *method*'s *key* (the longest gap, or the handover's own
    silence), x = flows or conntrack entries (reports at 1k flows)."""
    out = []
    for rep in reports:
        if rep.get("datapath", "netdev") != "netdev":
            continue
        flows = sorted(rep["by_flows"], key=int)
        if by == "conntrack" and flows[0] != "1000":
            continue
        for n in flows if by == "flows" else flows[:1]:
            if by == "flows" and rep.get("conntrack", 0):
                continue
            gaps = [g for g in rep["by_flows"][n][method].get(key, []) if g is not None]
            if gaps:
                x = float(n) if by == "flows" else float(rep.get("conntrack", 0))
                out.append((x, statistics.median(gaps), min(gaps), max(gaps)))
    return sorted(out)


def main(argv: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, *files = argv
    reports = [json.loads(Path(f).read_text()) for f in files]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, by in zip(axes, ("flows", "conntrack"), strict=True):
        for method, key, color, fmt, label in (
                ("ovsndu", "gap_ms", "tab:blue", "o-", "ovsndu, longest silence"),
                ("ovsndu", "handover_silence_ms", "tab:cyan", "s--", "ovsndu, the handover's"),
                ("upstream", "gap_ms", "tab:red", "o-", "upstream ovs-ctl restart")):
            pts = points(reports, method, by, key)
            if not pts:
                continue
            xs, med, lo, hi = zip(*pts, strict=True)
            ax.errorbar(xs, med, yerr=[[m - a for m, a in zip(med, lo, strict=True)],
                                       [b - m for m, b in zip(med, hi, strict=True)]],
                        fmt=fmt, color=color, label=label, capsize=3)
        ax.set_xlabel("flows" if by == "flows" else "idle conntrack entries (1k flows)")
        ax.set_ylabel("forwarding silence, ms (median, min..max)")
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:])
