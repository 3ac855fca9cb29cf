"""Time restoring flows (1k / 10k / 100k) and conntrack entries (1k / 10k) into a fresh vswitchd.

Targets (issue 4): <= 30 us per flow; >= 5k conntrack entries/s.  Two figures each: the
one-shot `ovsndu restore` (plan + encode + install) and the prepared install a live
upgrade does inside its gap.  Baseline in the same run: what upstream's own restart
uses for flows, `ovs-ofctl --bundle replace-flows` of the saved dump (ovs-save) into an
empty table; upstream has nothing for conntrack.

    .venv/bin/python -m benchmarks.restore [--flows 1000,10000,100000] [--conntrack 1000,10000]
                                           [--json OUT]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import add_conntrack, add_flows, make_bridge, write_json
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.restore import Restorer
from ovsndu.ovs.sandbox import Sandbox


def _measure(populate: Any, step: str) -> dict[str, Any]:
    """Populate A; restore A's snapshot into fresh vswitchds on copies of A's database.

    ``one_shot_s``: what ``ovsndu restore`` does (plan, encode through ovs-ofctl, install),
    read-back excluded.  ``prepared_s``: what a live upgrade spends in the gap, the plan
    having been built and encoded beforehand (``Restorer.plan(encode=True)``, untimed)
    and only applied here.  ``upstream_s`` (flows): ``ovs-ofctl --bundle replace-flows``
    of the saved dump into an empty table, as Debian's restart restores flows.
    """
    with Sandbox() as a, tempfile.TemporaryDirectory() as tmp:
        make_bridge(a)
        populate(a)
        snap = read_snapshot(a.rundir, a.db)
        out: dict[str, Any] = {"n": len(snap.categories[step])}
        with Sandbox(Path(tmp) / "b", db_file=a.copy_db(Path(tmp) / "b.db")) as b:
            report = Restorer(b.rundir, b.db).restore(snap)
            out["read_back"] = "verified" if report.after is not None else "unverified"
            out["one_shot_s"] = sum(v for k, v in report.durations.items() if k != "verify")
            if step == "flows":
                dump = a.ofctl("br0", "dump-flows", options=("--no-stats", "--no-names"))
                path = Path(tmp) / "flows.txt"
                path.write_text(dump)
                b.ofctl("br0", "del-flows")
                t = time.monotonic()
                b.ofctl("br0", "replace-flows", str(path), options=("--bundle",))
                out["upstream_s"] = time.monotonic() - t
        with Sandbox(Path(tmp) / "c", db_file=a.copy_db(Path(tmp) / "c.db")) as c:
            restorer = Restorer(c.rundir, c.db)
            plan = restorer.plan(snap, encode=True)
            t = time.monotonic()
            restorer.apply(plan, fresh=True)
            out["prepared_s"] = time.monotonic() - t
            restorer.verify(snap)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", default="1000,10000,100000")
    parser.add_argument("--conntrack", default="1000,10000")
    parser.add_argument("--json")
    args = parser.parse_args()
    report: dict[str, Any] = {"flows": [], "conntrack": []}
    for n in map(int, filter(None, args.flows.split(","))):
        row = _measure(lambda sb, n=n: add_flows(sb, n), "flows")
        for key in ("one_shot", "prepared"):
            row[f"{key}_us_per_flow"] = row[f"{key}_s"] / row["n"] * 1e6
        row["one_shot_ratio_to_upstream"] = row["one_shot_s"] / row["upstream_s"]
        report["flows"].append(row)
        print(f"flows {row['n']:>7}: one-shot {row['one_shot_us_per_flow']:.1f} us/flow, "
              f"prepared (in the gap) {row['prepared_us_per_flow']:.1f} us/flow "
              f"(target <= 30); upstream replace-flows {row['upstream_s'] / row['n'] * 1e6:.1f}"
              f" us/flow; {row['read_back']}", flush=True)
    for n in map(int, filter(None, args.conntrack.split(","))):
        row = _measure(lambda sb, n=n: add_conntrack(sb, n, tcp_share=0.5), "conntrack")
        for key in ("one_shot", "prepared"):
            row[f"{key}_entries_per_s"] = row["n"] / row[f"{key}_s"]
        report["conntrack"].append(row)
        print(f"conntrack {row['n']:>6} (half TCP established): one-shot "
              f"{row['one_shot_entries_per_s']:.0f} entries/s, prepared "
              f"{row['prepared_entries_per_s']:.0f} entries/s (target >= 5000); "
              f"{row['read_back']}", flush=True)
    write_json(args.json, report)


if __name__ == "__main__":
    main()
