"""How long one conntrack read holds vswitchd's main thread (forwarding stops meanwhile).

    .venv/bin/python -m benchmarks.ct_hold [--flows N] [--conntrack M] [--ct-zones Z]
                                           [--repeat R]

With the netdev datapath the main thread polls the non-PMD ports (veths here), so a
unixctl command it spends *s* seconds on is an *s*-second silence of the disruption
benchmark's A→B stream (2000 pkt/s).  Same sandbox as ``benchmarks.disruption``
(N filler rules, the stateful ACL, M idle entries over Z zones, 8 by default); per command, R times,
one second apart: the command's wall time and the longest silence that overlaps it.
Also the Python side (parsing the full dump), ovsndu's reader (:mod:`ovsndu.ovs.ct_read`:
a full dump while no zone is known, then zone by zone) and the supervisor's keeper
(a snapshot reading conntrack, one keeping it): wall time and every silence over 20 ms.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.disruption import Run, _arrivals
from benchmarks.measure import ZONE_BASE, ZONES
from ovsndu.ovs import appctl_parsers, ct_read
from ovsndu.ovs.daemon import VswitchdSpec
from ovsndu.ovs.unixctl import Unixctl
from ovsndu.upgrade.keeper import StateKeeper

DP = "netdev@ovs-netdev"


def _commands(zones: int = ZONES) -> list[tuple[str, tuple[str, ...]]]:
    zone = f"zone={ZONE_BASE}"
    return [
        ("ct-get-nconns", ("dpctl/ct-get-nconns",)),
        ("ct-stats-show", ("dpctl/ct-stats-show",)),
        ("dump-conntrack zone=1 (measured connections)", ("dpctl/dump-conntrack", "-m", "-s",
                                                          "zone=1")),
        (f"dump-conntrack {zone} (1/{zones} of the idle entries)",
         ("dpctl/dump-conntrack", "-m", "-s", zone)),
        ("dump-conntrack -m -s (full)", ("dpctl/dump-conntrack", "-m", "-s")),
    ]


def measure(run: Run, repeat: int) -> dict[str, Any]:
    sb = run.sb
    run.start_traffic()
    run.t0 = time.monotonic()
    calls: list[tuple[str, float, float, int]] = []
    for name, argv in _commands(run.ct_zones):
        for _ in range(repeat):
            time.sleep(1.0)
            t0 = time.monotonic()
            text = sb.appctl(*argv)
            t1 = time.monotonic()
            calls.append((name, t0, t1, len(text)))
    t = time.monotonic()
    entries = appctl_parsers.parse_conntrack(sb.appctl("dpctl/dump-conntrack", "-m", "-s"))
    parse_s = time.monotonic() - t
    # ovsndu's readers: ovs/ct_read.py (a full dump first, then zone by zone), and the
    # supervisor's keeper (a snapshot reading conntrack, then one keeping it).
    spans: list[tuple[str, float, float]] = []
    with Unixctl.for_daemon(sb.rundir) as appctl:
        for name in ("read_conntrack, zones unknown (full dump)",
                     "read_conntrack, zone by zone"):
            time.sleep(1.0)
            t0 = time.monotonic()
            ct_read.read_conntrack(appctl, DP)
            spans.append((name, t0, time.monotonic()))
    keeper = StateKeeper(VswitchdSpec(sb.rundir, sb.db))
    for name in ("keeper snapshot reading conntrack", "keeper snapshot keeping conntrack"):
        time.sleep(1.0)
        t0 = time.monotonic()
        keeper.take(sb.vswitchd_pid)
        spans.append((name, t0, time.monotonic()))
    time.sleep(1.0)
    run.stop_traffic()
    times = [a for _, a in _arrivals(run.work / "udp.txt")]
    out: dict[str, Any] = {"ct_entries": run.ct_entries, "parsed": len(entries),
                           "python_parse_full_s": round(parse_s, 3), "commands": {}}
    for name, _ in _commands(run.ct_zones):
        walls, holds, sizes = [], [], []
        for n, t0, t1, size in calls:
            if n != name:
                continue
            walls.append((t1 - t0) * 1000)
            sizes.append(size)
            gaps = [(b - a) * 1000 for a, b in itertools.pairwise(times)
                    if b >= t0 and a <= t1]
            holds.append(max(gaps, default=0.0))
        out["commands"][name] = {"wall_ms": [round(w) for w in walls],
                                 "silence_ms": [round(h) for h in holds],
                                 "median_silence_ms": round(statistics.median(holds)),
                                 "reply_bytes": sizes[0]}
    for name, t0, t1 in spans:
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise(times) if b >= t0 and a <= t1]
        out["commands"][name] = {"wall_ms": [round((t1 - t0) * 1000)],
                                 "silence_ms": [round(max(gaps, default=0.0))],
                                 "silences_over_20ms": [round(g) for g in gaps if g > 20]}
    out["keeper_traffic_read_s"] = round(keeper.traffic_read_s, 3)
    out["keeper_traffic_every_s"] = round(max(keeper.refresh, keeper.traffic_every_s()))
    out["keeper_traffic_hold_ms"] = round(keeper.traffic_hold_s * 1000, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--conntrack", type=int, default=100_000)
    parser.add_argument("--ct-zones", type=int, default=ZONES, metavar="Z")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ovsndu-cthold-") as tmp, \
            Run(Path(tmp), args.flows, args.conntrack, ct_zones=args.ct_zones) as run:
        out = measure(run, args.repeat)
    out["loadavg"] = os.getloadavg()
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
