"""Time `ovsndu snapshot` of a vswitchd holding 100k flows and 10k conntrack entries.

Target (issue 2): <= 5 s on a 2-core machine.  Also reports, as a ratio, the
upstream baseline of the same dumps done by the stock tools alone
(`ovs-ofctl dump-flows` + `ovs-appctl dpctl/dump-conntrack`).

    .venv/bin/python -m benchmarks.snapshot [--flows N] [--conntrack M] [--runs K] [--json OUT]
"""

from __future__ import annotations

import argparse
import subprocess
import time

from benchmarks.common import add_conntrack, add_flows, make_bridge, summary, write_json
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import Sandbox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--conntrack", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    with Sandbox() as sb:
        make_bridge(sb)
        t = time.monotonic()
        add_flows(sb, args.flows)
        add_conntrack(sb, args.conntrack)
        print(f"populated in {time.monotonic() - t:.1f} s")
        ours, stock = [], []
        for _ in range(args.runs):
            t = time.monotonic()
            snap = read_snapshot(sb.rundir, sb.db)
            ours.append(time.monotonic() - t)
            counts = snap.counts()
            assert counts["flows"] >= args.flows, counts
            assert counts["conntrack"] == args.conntrack, counts
            t = time.monotonic()
            for argv in (["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", "br0"],
                         ["ovs-appctl", "dpctl/dump-conntrack", "-m", "-s"]):
                subprocess.run(argv, env=sb.env, check=True, capture_output=True)
            stock.append(time.monotonic() - t)
    report = {"flows": args.flows, "conntrack": args.conntrack, "snapshot_s": summary(ours),
              "stock_dump_s": summary(stock),
              "ratio_median": summary(ours)["median"] / summary(stock)["median"],
              "target_s": 5.0}
    print(f"snapshot of {args.flows} flows + {args.conntrack} conntrack entries: "
          f"min {min(ours):.2f} s, median {report['snapshot_s']['median']:.2f} s, "
          f"max {max(ours):.2f} s (target <= 5 s)")
    print(f"stock ovs-ofctl + ovs-appctl dumps alone: median {report['stock_dump_s']['median']:.2f}"
          f" s; ratio {report['ratio_median']:.2f}x")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
