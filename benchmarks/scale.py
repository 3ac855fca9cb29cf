"""A live upgrade at scale: 200k flows over 4 bridges (with groups and meters), 100k conntrack
entries and 10k FDB entries, with the disruption benchmark's traffic and fields.

    .venv/bin/python -m benchmarks.scale [--flows 200000] [--conntrack 100000] [--fdb 10000]
                                         [--runs 1] [--no-upstream] [--json OUT]

One sandbox per run (netdev datapath in its own namespace): br0 carries the
disruption benchmark's endpoints, stateful ACL and traffic
(:mod:`benchmarks.disruption`); br0..br3 share the flows (ACL-like rules that traffic
never hits, 4 tables), each holds 100 select groups and 10 meters; br1 (mac-table-size
raised) learns the FDB entries from packet-outs through NORMAL; the conntrack entries
are :func:`benchmarks.measure.fill_conntrack`'s mix.  Fields per method as in
``benchmarks.disruption`` (``gap_ms``, ``established_survived``, ``ct_entries``,
``peak_rss_mib``, ``upgrade_s``...), plus ``raw_equal``: for every bridge the raw
``ovs-ofctl dump-flows --no-stats``, ``dump-groups`` and ``dump-meters`` output equal before
and after, and ``raw_missing``: conntrack (``dpctl/dump-conntrack``) and FDB
(``fdb/show`` without ages) lines present before and absent after (traffic may add some).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import supervisor_status, wait_for
from benchmarks.disruption import Run, _median
from benchmarks.measure import ct_total
from ovsndu.ovs.packets import ethernet
from ovsndu.testing.state_corpus import raw_conntrack, raw_fdb, raw_ofctl

BRIDGES = ("br0", "br1", "br2", "br3")
GROUPS, METERS = 100, 10
FDB_BRIDGE = "br1"


def bridge_flows(bridge: int, n: int) -> list[str]:
    """*n* rules of one bridge over tables 0-3 that the measured traffic never hits."""
    out = []
    for i in range(n):
        table = i % 4
        src = f"172.{16 + bridge}.{(i >> 8) & 0xFF}.{i & 0xFF}"
        act = (f"goto_table:{table + 1}" if table < 3 else
               f"group:{1 + i % GROUPS}" if i % 3 == 0 else
               f"meter:{1 + i % METERS}" if i % 3 == 1 else "drop")
        out.append(f"table={table},priority={10 + (i >> 16) % 30},tcp,nw_src={src},"
                   f"tp_dst={1 + (i >> 8) % 60000},actions={act}")
    return out


class ScaleRun(Run):
    """The disruption benchmark's run, with four bridges of state."""

    UPGRADE_TIMEOUT = 1800

    def __init__(self, work: Path, flows: int, conntrack: int, fdb: int):
        super().__init__(work, flows // len(BRIDGES), conntrack)
        self.fdb = fdb
        self.flows_total = flows

    def __enter__(self) -> ScaleRun:
        super().__enter__()  # br0: endpoints, ACL, its share of filler rules, conntrack
        sb, per = self.sb, self.flows_total // len(BRIDGES)
        for k, br in enumerate(BRIDGES):
            if br != "br0":
                sb.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
                         "fail_mode=secure", "protocols=OpenFlow10,OpenFlow13,OpenFlow15",
                         "other_config:mac-table-size=50000",
                         "--", "add-port", br, f"{br}p1", "--", "set", "interface",
                         f"{br}p1", "type=internal", "ofport_request=1",
                         "--", "add-port", br, f"{br}p2", "--", "set", "interface",
                         f"{br}p2", "type=internal", "ofport_request=2")
            for m in range(1, METERS + 1):  # before the flows that use them
                sb.ofctl(br, "add-meter", f"meter={m},kbps,band=type=drop,rate={1000 * m}",
                         version="OpenFlow13")
            lines = [f"group add group_id={g},type=select,bucket=weight:1,actions=output:1,"
                     f"bucket=weight:1,actions=output:2" for g in range(1, GROUPS + 1)]
            lines += [f"flow add {f}" for f in bridge_flows(k, per if br != "br0" else 0)]
            self._bundle(br, lines)
        frames = [ethernet(src_mac=f"02:10:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:"
                           f"{i & 0xFF:02x}:01", dst_mac="02:ff:ff:ff:ff:fe") for i in range(
                               self.fdb)]
        self._bundle(FDB_BRIDGE, [f"packet-out in_port=1 packet={f.hex()} actions=NORMAL"
                                  for f in frames])
        self.idle_since = time.monotonic()
        return self

    def _bundle(self, bridge: str, lines: list[str]) -> None:
        for start in range(0, len(lines), 20_000):
            with tempfile.NamedTemporaryFile("w", suffix=".bundle", delete=False) as f:
                f.write("\n".join(lines[start:start + 20_000]) + "\n")
            try:
                self.sb.ofctl(bridge, "bundle", f.name, version="OpenFlow15")
            finally:
                Path(f.name).unlink()

    def before_reload(self, cfg_path: Path) -> None:
        """Wait for the supervisor's first snapshot of the state (its keeper's, taken a
        second after it starts): a supervisor that has run for a while holds one, and at
        this size that read takes ~10 s of CPU, which would run beside the reload's."""
        wait_for(lambda: supervisor_status(cfg_path).get("last_known_state") is not None,
                 300)

    def raw(self) -> dict[str, Any]:
        """Raw tool output of every category (volatile columns removed)."""
        sb = self.sb
        out: dict[str, Any] = {}
        for br in BRIDGES:
            out[f"{br} flows"] = sorted(raw_ofctl(sb, br, "dump-flows", options=("--no-stats",))
                                        .splitlines()[1:])
            out[f"{br} groups"] = sorted(raw_ofctl(sb, br, "dump-groups").splitlines()[1:])
            out[f"{br} meters"] = raw_ofctl(sb, br, "dump-meters", version="OpenFlow13")
        out["fdb"] = raw_fdb(sb, FDB_BRIDGE)
        out["conntrack"] = raw_conntrack(sb)
        return out

    def after_upgrade(self, out: dict[str, Any]) -> None:
        out["raw_after"] = self.raw()
        out["ct_entries_after"] = ct_total(self.sb)

    def measured(self, method: str) -> dict[str, Any]:
        before = self.raw()
        res: dict[str, Any] = getattr(self, method)()
        after = res.pop("raw_after")
        res["raw_equal"] = {k: before[k] == after[k] for k in before
                            if k not in ("fdb", "conntrack")}
        res["raw_missing"] = {k: len(set(before[k]) - set(after[k]))
                              for k in ("fdb", "conntrack")}
        res["counts_before"] = {"flows": sum(len(before[f"{b} flows"]) for b in BRIDGES),
                                "fdb": len(before["fdb"]), "conntrack": len(before["conntrack"])}
        return res


def main() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=200_000)
    p.add_argument("--conntrack", type=int, default=100_000)
    p.add_argument("--fdb", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--upstream", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json")
    args = p.parse_args()
    methods = ("ovsndu", "upstream") if args.upstream else ("ovsndu",)
    per: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for k in range(args.runs):
        for method in methods if k % 2 == 0 else methods[::-1]:
            with tempfile.TemporaryDirectory(prefix="ovsndu-scale-") as tmp, \
                    ScaleRun(Path(tmp), args.flows, args.conntrack, args.fdb) as run:
                res = run.measured(method)
            res.pop("arrivals", None)
            per[method].append(res)
            why = res.get("reason") or ""
            print(f"run {k + 1} {method}: exit {res['exit_code']} {why}, "
                  f"{res['upgrade_s']:.1f} s, "
                  f"gap {res['gap_ms']:.0f} ms, survived {res['established_survived']}, "
                  f"ct {res['ct_entries']}, raw equal {all(res['raw_equal'].values())}, "
                  f"missing {res['raw_missing']}, rss {res.get('peak_rss_mib')}, "
                  f"marks {json.dumps(res.get('marks', {}))}", flush=True)
    fields = ("gap_ms", "lost", "reason", "stalled_ms", "stalls", "tcp_survived",
              "established_survived", "ct_entries",
              "upgrade_s", "exit_code", "peak_rss_mib", "raw_equal", "raw_missing",
              "counts_before", "marks", "phases", "forbidden_delivered")
    by: dict[str, Any] = {m: {f: [r.get(f) for r in per[m]] for f in fields} for m in methods}
    if args.upstream:
        ours, theirs = _median(by["ovsndu"]["gap_ms"]), _median(by["upstream"]["gap_ms"])
        by["gap_ratio_median"] = ours / theirs if ours is not None and theirs else None
    report = {"flows": args.flows, "conntrack": args.conntrack, "fdb": args.fdb,
              "by_flows": {str(args.flows): by}}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
