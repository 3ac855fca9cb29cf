"""Time restoring flows (1k / 10k / 100k) and conntrack entries (1k / 10k) into a fresh vswitchd.

Targets (issue 4): <= 30 us per flow; >= 5k conntrack entries/s.  Baseline in the same
run: what upstream's own restart uses for flows, `ovs-ofctl --bundle replace-flows`
of the saved dump (ovs-save); upstream has nothing for conntrack.

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


def _measure(populate: Any, step: str) -> tuple[float, float, int, str]:
    """Populate A, restore A's snapshot into B (fresh, DB copy); (step s, baseline s, n, ok)."""
    with Sandbox() as a, tempfile.TemporaryDirectory() as tmp:
        make_bridge(a)
        populate(a)
        snap = read_snapshot(a.rundir, a.db)
        db = a.copy_db(Path(tmp) / "conf.db")
        with Sandbox(Path(tmp) / "b", db_file=db) as b:
            report = Restorer(b.rundir, b.db).restore(snap)
            ok = "verified" if report.after is not None else "unverified"
            n = len(snap.categories[step])
            baseline = 0.0
            if step == "flows":
                dump = a.ofctl("br0", "dump-flows", options=("--no-stats", "--no-names"))
                path = Path(tmp) / "flows.txt"
                path.write_text(dump)
                t = time.monotonic()
                b.ofctl("br0", "replace-flows", str(path), options=("--bundle",))
                baseline = time.monotonic() - t
            # Everything a restore does but the read-back (planning included).
            spent = sum(v for k, v in report.durations.items() if k != "verify")
            return spent, baseline, n, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", default="1000,10000,100000")
    parser.add_argument("--conntrack", default="1000,10000")
    parser.add_argument("--json")
    args = parser.parse_args()
    report: dict[str, Any] = {"flows": [], "conntrack": []}
    for n in map(int, filter(None, args.flows.split(","))):
        secs, base, count, ok = _measure(lambda sb, n=n: add_flows(sb, n), "flows")
        row = {"n": count, "restore_s": secs, "us_per_flow": secs / count * 1e6,
               "upstream_replace_flows_s": base, "ratio": secs / base, "read_back": ok}
        report["flows"].append(row)
        print(f"flows {count:>7}: {secs:.3f} s = {row['us_per_flow']:.1f} us/flow "
              f"(target <= 30); upstream replace-flows {base:.3f} s; ratio {row['ratio']:.2f}"
              f"; {ok}")
    for n in map(int, filter(None, args.conntrack.split(","))):
        secs, _, count, ok = _measure(lambda sb, n=n: add_conntrack(sb, n, tcp_share=0.5),
                                      "conntrack")
        row = {"n": count, "restore_s": secs, "entries_per_s": count / secs, "read_back": ok}
        report["conntrack"].append(row)
        print(f"conntrack {count:>6} (half TCP established): {secs:.3f} s = "
              f"{row['entries_per_s']:.0f} entries/s (target >= 5000); {ok}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
