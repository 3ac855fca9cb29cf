"""Reloads on a switch that keeps changing: N reloads under churn and controller writes.

One netdev sandbox (two namespaces, a stateful ACL committing new connections from A in
conntrack zone 1, NORMAL for everything allowed; room for 100k MACs).  During the whole
run A opens new UDP connections at ``--churn`` per second and sends frames from new MACs
at 50/s, B streams TCP to A, and a writer adds a flow to br0 through its management
socket every ~30 ms (``ovs-ofctl add-flow``, acknowledged by a barrier), and a controller
holding one connection open (``ovsndu.testing.ofwriter``: flows in table 4, groups and
meters added, modified and deleted, each acknowledged by a barrier; it connects again to
the new process after each reload).  Then ``--runs`` reloads, one after the other.  Per
reload: exit code, connections sent before conntrack was frozen for the final read and
MACs seen before the handover, missing afterwards
(OVS's dpctl/dump-conntrack and fdb/show), acknowledged flow writes missing afterwards,
writes acknowledged in the 500 ms before the old process stopped (and on the open
connection, after the final read), TCP alive, the gap and what the final catch-up cost.
At the end the open connection's acknowledged state is compared with raw dumps.

    python -m benchmarks.live_reloads --runs 10 --churn 250

``--ovn``: the pipeline is a private OVN stack's (ovsndu.testing.ovn: logical switch,
allow-related ACLs, its load balancer and a UDP one) on br-int instead; A's new
connections go through the UDP VIP (each DNAT'd: a NAT pipeline, frozen all the same),
the TCP download through the TCP VIP.  A connection counts as carried when both of its entries
(the DNAT'd one and B's) are in the new process.  ovn-controller owns br-int and
rewrites it when it reconnects: no flow writers, and no MAC churn (OVN does not learn).

    python -m benchmarks.live_reloads --ovn --runs 5 --churn 250 [--no-nat-freeze]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ovsndu.config import Config
from ovsndu.ovs.sandbox import NETDEV_ARGS, Sandbox
from ovsndu.testing.endpoints import Endpoint, add_endpoint
from ovsndu.testing.ofwriter import OpenWriter, tables
from ovsndu.testing.ovn import UDP_VIP_PORT, VIP, VIP_PORT, OvnStack, lb_connections

ACL = (
    "table=0,priority=100,arp,actions=NORMAL",
    "table=0,priority=100,ip,actions=ct(table=1,zone=1)",
    "table=0,priority=10,actions=NORMAL",
    "table=1,priority=100,ct_state=+trk+new,ip,in_port=1,actions=ct(commit,zone=1),NORMAL",
    "table=1,priority=100,ct_state=+trk+est,ip,actions=NORMAL",
    "table=1,priority=0,actions=drop",
)


def _vswitchd() -> str:
    for path in ("/usr/sbin/ovs-vswitchd", "/usr/lib/openvswitch-switch/ovs-vswitchd"):
        if os.path.exists(path):
            return path
    return "ovs-vswitchd"


class Writer(threading.Thread):
    """Adds flows to br0 over its management socket until stopped; keeps the acked ones."""

    def __init__(self, rundir: Path):
        super().__init__(daemon=True)
        self.target = f"unix:{rundir}/br0.mgmt"
        self.stop = threading.Event()
        self.acked: list[tuple[int, float]] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            r = subprocess.run(["ovs-ofctl", "add-flow", self.target,
                                f"table=3,priority={n % 60000},udp,tp_dst={n},actions=drop"],
                               capture_output=True, check=False)
            if r.returncode == 0:
                self.acked.append((n, time.monotonic()))
            time.sleep(0.02)


def _sent(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text().splitlines():
        t, _, what = line.partition(" ")
        if what:
            out.append((float(t), what))
    return out


def _tcp(path: Path) -> tuple[int, str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return (int(lines[0]) if lines and lines[0].isdigit() else 0,
            lines[1] if len(lines) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--churn", type=float, default=250.0, help="new connections per second")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ovn", action="store_true", help="an OVN stack's pipeline (see above)")
    ap.add_argument("--no-nat-freeze", action="store_true",
                    help="[upgrade] ct_freeze_nat = false (a NAT pipeline is not frozen)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ovsndu-live-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: list[dict[str, Any]] = []
    with Sandbox(work / "run", datapath="netdev", vswitchd_args=NETDEV_ARGS) as sb, \
            contextlib.ExitStack() as stack:
        if args.ovn:
            ovn = stack.enter_context(OvnStack(sb, work / "ovn"))
            ovn.add_udp_lb()
            a, b = ovn.a, ovn.b
        else:
            # Room for every MAC the churn teaches (OVS's default is 2048 entries).
            sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
                     "fail_mode=secure", "other_config:mac-table-size=100000")
            a = add_endpoint(sb, "br0", "a-sw", "10.0.0.1", 1)
            b = add_endpoint(sb, "br0", "b-sw", "10.0.0.2", 2)
            sb.ofctl("br0", "add-flows", "-", input_text="\n".join(ACL) + "\n")
        cfg = Config.from_dict({
            "ovs": {"rundir": str(sb.rundir), "db": sb.db, "vswitchd": _vswitchd(),
                    "vswitchd_args": list(NETDEV_ARGS), "netns": sb.netns or ""},
            "upgrade": {"timeout": 120, "ct_freeze_nat": not args.no_nat_freeze},
            "ovsndu": {"state_dir": str(work / "state")},
        })
        cfg_path = work / "ovsndu.toml"
        cfg_path.write_text(cfg.to_toml())
        sup_log = open(work / "supervisor.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen([sys.executable, "-m", "ovsndu", "supervise", "--config",
                                       str(cfg_path)], stdout=sup_log, stderr=sup_log))
        time.sleep(2)

        def probe(ep: Endpoint, *argv: str) -> None:
            procs.append(subprocess.Popen(ep.argv([sys.executable, "-m", *argv])))

        writer = Writer(sb.rundir)
        holder = None if args.ovn else OpenWriter(sb.mgmt_path("br0"), pace=0.01, table=4)
        open_lost: dict[str, int] = {}
        try:
            probe(b, "ovsndu.testing.probe", "tcp-push", "5001")
            time.sleep(0.5)
            probe(a, "ovsndu.testing.probe", "tcp-sink", *((VIP, str(VIP_PORT)) if args.ovn
                  else (b.ip, "5001")), str(work / "tcp.txt"))
            probe(a, "ovsndu.testing.churn", "udp", *((VIP, str(UDP_VIP_PORT)) if args.ovn
                  else (b.ip, "7000")), str(args.churn), str(work / "udp.txt"))
            (work / "mac.txt").touch()
            if holder is not None:
                probe(a, "ovsndu.testing.churn", "mac", "eth0", "50", str(work / "mac.txt"))
                writer.start()
                holder.start()
            time.sleep(1.5)
            gaps: list[tuple[float, float]] = []
            for i in range(args.runs):
                tcp_before = _tcp(work / "tcp.txt")[0]
                r = subprocess.run([sys.executable, "-m", "ovsndu", "reload", "--config",
                                    str(cfg_path), "--json"], capture_output=True, text=True,
                                   check=False)
                res = json.loads(r.stdout) if r.stdout.strip() else {}
                rec = res.get("record") or {}
                marks = rec.get("marks", {})
                (ph,) = [p for p in rec.get("phases", []) if p["phase"] == "handover"] or [None]
                row: dict[str, Any] = {"run": i + 1, "exit": r.returncode,
                                       "reason": res.get("reason", "")}
                if ph is not None:
                    start = (datetime.fromisoformat(ph["started"]).timestamp()
                             - (time.time() - time.monotonic()))
                    cut = start - 0.05

                    def seen(t: float, cut: float = cut) -> bool:
                        return t < cut and not any(x - .05 <= t <= y + .05 for x, y in gaps)

                    # Conntrack: every connection sent before the final read froze entry
                    # creation (50 ms to reach the old process; not frozen: before the
                    # stop) existed when it stopped, unless its 60 s (udp_first) ran out.
                    frozen = start + marks.get("ct_frozen", marks.get("old_stopped", 0)
                                               ) / 1000 - 0.05
                    conns = {p for t, p in _sent(work / "udp.txt")
                             if seen(t, frozen) and t > time.monotonic() - 55}
                    macs = {m for t, m in _sent(work / "mac.txt") if seen(t)}
                    if args.ovn:
                        ct = {str(p) for p in lb_connections(sb.appctl("dpctl/dump-conntrack"))}
                        fdb: set[str] = set()
                        flows = ""
                    else:
                        ct = set(re.findall(r"sport=(\d+),dport=7000",
                                            sb.appctl("dpctl/dump-conntrack", "zone=1")))
                        fdb = {ln.split()[2]
                               for ln in sb.appctl("fdb/show", "br0").splitlines()[1:]}
                        flows = sb.ofctl("br0", "dump-flows", "table=3")
                    have = {int(m) for m in re.findall(r"tp_dst=(\d+)", flows)}
                    stopped = start + marks.get("old_stopped", 0) / 1000
                    read_done = start + marks.get("final_read_done", 0) / 1000
                    late = [n for n, t in writer.acked if stopped - 0.5 <= t <= stopped]
                    held = [t for t, _w, _k in holder.acked] if holder else []
                    row.update(
                        conns_lost=len(conns - ct), conns_checked=len(conns),
                        macs_lost=len(macs - fdb), macs_checked=len(macs),
                        writes_lost=len([n for n, t in writer.acked if t < stopped
                                         and n not in have]),
                        late_writes=len(late), late_writes_lost=len(set(late) - have),
                        open_late_writes=sum(1 for t in held if stopped - 0.5 <= t <= stopped),
                        open_after_read=sum(1 for t in held if read_done < t <= stopped),
                        gap_ms=marks.get("flow_restore_wait_lifted"),
                        catchup_read_ms=marks.get("catchup_read_ms"),
                        openflow_window_ms=marks.get("catchup_openflow_read_ms"),
                        traffic_read_ms=marks.get("catchup_traffic_read_ms"),
                        ct_frozen_ms=marks.get("catchup_ct_frozen_ms"),
                        ct_refused=marks.get("catchup.ct_refused"),
                        ct_named=[x[:60] for x in rec.get("anomalies", [])
                                  if "conntrack" in x],
                        drain_ms=marks.get("catchup_drain_ms"),
                        catchup_apply_ms=marks.get("install_catchup_ms"),
                        catchup={k: v for k, v in marks.items() if k.startswith("catchup.")})
                    gaps.append((start, time.monotonic()))
                deadline = time.monotonic() + 5  # TCP backs off over a gap (RTO doubling)
                while _tcp(work / "tcp.txt")[0] <= tcp_before and time.monotonic() < deadline:
                    time.sleep(0.1)
                tcp_after, err = _tcp(work / "tcp.txt")
                row["tcp_alive"] = err == "" and tcp_after > tcp_before
                results.append(row)
                print(json.dumps(row) if args.json else
                      " ".join(f"{k}={v}" for k, v in row.items() if k != "catchup"),
                      flush=True)
            if holder is not None:
                holder.stop.set()
                holder.join(30)
                lost = holder.differences(*tables(lambda *a: sb.ofctl("br0", *a,
                                                                      version="OpenFlow13"), 4))
                open_lost = {k: len(v) for k, v in lost.items()}
        finally:
            writer.stop.set()
            if holder is not None:
                holder.stop.set()
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
    shutil.rmtree(work, ignore_errors=True)
    ok = [r for r in results if r["exit"] == 0]
    applied = [r["catchup_apply_ms"] for r in ok if r.get("catchup_apply_ms")]
    print(f"{len(ok)}/{len(results)} reloads exit 0; "
          f"connections lost {sum(r.get('conns_lost', 0) for r in results)}, "
          f"MACs lost {sum(r.get('macs_lost', 0) for r in results)}, "
          f"acknowledged writes lost {sum(r.get('writes_lost', 0) for r in results)} "
          f"(of which in the last 500 ms {sum(r.get('late_writes_lost', 0) for r in results)}"
          f" of {sum(r.get('late_writes', 0) for r in results)}), "
          f"TCP alive {sum(bool(r['tcp_alive']) for r in results)}/{len(results)}; "
          + (f"open connection: {len(holder.acked)} writes acknowledged over "
             f"{holder.connections} connections, "
             f"{sum(r.get('open_after_read', 0) for r in results)} after a final read, "
             f"lost {open_lost} ({len(holder.ambiguous)} ambiguous, refused "
             f"{len(holder.refused)}); " if holder else "")
          + f"conntrack checked up to {max(r.get('conns_checked', 0) for r in [{}, *results])}"
          " a run; "
          f"catch-up apply median {statistics.median(applied) if applied else 0:.1f} ms")


if __name__ == "__main__":
    main()
