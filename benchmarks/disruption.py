"""Traffic disruption of ovsndu's live upgrade against upstream's restart, on real traffic.

    .venv/bin/python -m benchmarks.disruption [--flows N[,N...]] [--conntrack M] [--runs K]
                                              [--ct-zones Z]
                                              [--datapath netdev|dpdk] [--churn RATE] [--ovn]
                                              [--preinit-baseline]
                                              [--json OUT] [--plot OUT.png]

Per run, in namespaces it creates and removes: a private OVS (netdev datapath) in its
own namespace, two endpoints A and B on veths, a pipeline of N filler rules plus a
stateful ACL (new connections only from A to B, established traffic both ways,
everything else dropped), and traffic:

* sequence-numbered UDP A→B at a fixed rate (2000 pkt/s): longest gap, packets lost;
* an established TCP download B→A through the ACL: does it survive (no reset, keeps
  transferring)?
* UDP B→A on a new flow, which the ACL forbids: delivered count (must be 0);
* a UDP "download" B→A (A sent one datagram, B streams back at 200 pkt/s): does it keep
  flowing?  It and the TCP download are the *measured connections*;
  ``established_survived`` is the fraction of them still flowing at the end;
* with ``--conntrack M``, M idle conntrack entries besides (benchmarks.measure: TCP
  established, UDP, ICMP, some NAT; ``--ct-zones Z``: over Z zones, 8 by default),
  aged past ovsndu's 5 s window;
* with ``--churn RATE``, RATE new UDP connections a second A→B and new MACs from A all
  through the run (benchmarks.churn): ``churn_per_s``, ``churn_delivered``,
  ``churn_answered``, ``churn_macs``;
* with ``--ovn``, the pipeline is a private OVN stack's (logical switch, port groups with
  allow-related ACLs, a load balancer; benchmarks.churn) instead of the filler ACL, and
  N is the number of flows ovn-controller installed in br-int (``--flows`` is ignored);

then either ``ovsndu reload`` through a real supervisor, or Debian's stock ExecReload
(``ovs-ctl --no-ovsdb-server --no-monitor --system-id=random --no-record-hostname
restart``), alternating which goes first.  The JSON report has one object per method
with per-run lists ``gap_ms``, ``lost``, ``tcp_survived``, ``forbidden_delivered``,
``upgrade_s`` (and ovsndu's per-phase seconds), ``ct_entries`` (before the upgrade),
``established_survived``, ``peak_rss_mib`` (ovsndu: peak of the summed RSS of the
supervisor, client, its ovs-ofctl encoders and the reload command, and each role's
largest), per N.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
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

from benchmarks import dpdk_run
from benchmarks.churn import CHURN_KEYS, ChurnLoad, churn_text, ovn_pipeline
from benchmarks.common import start_supervisor, supervisor_status, wait_for
from benchmarks.measure import ZONES, RssSampler, ct_total, fill_conntrack
from ovsndu.ovs.ct_defer import HOT_WINDOW_S
from ovsndu.ovs.sandbox import NETDEV_ARGS, Sandbox
from ovsndu.testing.dpdk import DPDK_VSWITCHD, hugepages
from ovsndu.testing.endpoints import Endpoint, add_endpoint

RATE = 2000.0
SUB_RATE = 200.0
FORBIDDEN_RATE = 200.0
PRE_S, POST_S = 2.0, 3.0
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
ACL = (
    "table=0,priority=100,arp,actions=NORMAL",
    "table=0,priority=100,ip,actions=ct(table=1,zone=1)",
    "table=1,priority=100,ct_state=+trk+new,ip,in_port=1,actions=ct(commit,zone=1),output:2",
    "table=1,priority=100,ct_state=+trk+est,ip,in_port=1,actions=output:2",
    "table=1,priority=100,ct_state=+trk+est,ip,in_port=2,actions=output:1",
    "table=1,priority=0,actions=drop",
)


def filler(n: int) -> list[str]:
    """*n* ACL-like rules that the test traffic never hits."""
    return [f"table=0,priority={50 + i % 40},ip,nw_src=172.{16 + (i >> 16) % 16}."
            f"{(i >> 8) & 0xFF}.{i & 0xFF},nw_dst=10.0.0.0/8,actions=drop" for i in range(n)]


class Run:
    """One sandbox with endpoints, pipeline and traffic; measures one upgrade method."""

    UPGRADE_TIMEOUT = 300  # [upgrade] timeout, seconds

    def __init__(self, work: Path, n_flows: int, conntrack: int = 0, churn: float = 0.0,
                 ovn: bool = False, *, dpdk_huge: Path | None = None, ct_zones: int = ZONES):
        self.work = work
        self.ct_zones = ct_zones  # the idle entries' zones (benchmarks.measure)
        # --datapath dpdk: the DPDK build, DPDK initialised on this hugetlbfs (dpdk_run.py)
        self.dpdk_huge = dpdk_huge
        self.binary = str(DPDK_VSWITCHD) if dpdk_huge else _vswitchd()
        self.n = n_flows
        self.conntrack = conntrack
        self.churn, self.ovn = churn, ovn
        self.stack: Any = None
        self.load: ChurnLoad | None = None
        self.idle_since = 0.0
        self.t0 = 0.0  # monotonic start of the upgrade command
        self.sb = Sandbox(work / "run", datapath="netdev", vswitchd=self.binary,
                          vswitchd_args=())
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Run:
        sb = self.sb
        sb.start()
        if self.dpdk_huge:
            dpdk_run.start(sb, self.dpdk_huge)
        threading.Thread(target=self._reap, daemon=True).start()
        bridge = "br0"
        if self.ovn:
            self.stack, self.a, self.b, self.n = ovn_pipeline(sb, self.work)
            bridge = "br-int"
        else:
            sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
                     "fail_mode=secure")
            self.a = add_endpoint(sb, "br0", "a-sw", "10.0.0.1", 1)
            self.b = add_endpoint(sb, "br0", "b-sw", "10.0.0.2", 2)
            if self.dpdk_huge:
                dpdk_run.as_dpdk_ports(sb, ["a-sw", "b-sw"])
            rules = self.work / "rules.txt"
            rules.write_text("\n".join([*filler(self.n), *ACL]) + "\n")
            sb.ofctl("br0", "add-flows", str(rules), options=("--bundle",))
        if self.conntrack:
            fill_conntrack(sb, self.conntrack, bridge=bridge, zones=self.ct_zones)
        self.idle_since = time.monotonic()
        return self

    def before_reload(self, cfg_path: Path) -> None:
        """Called once the supervisor is up, before the traffic and the reload start."""

    def after_upgrade(self, out: dict[str, Any]) -> None:
        """Called after each method's traffic stopped, while the supervisor still runs
        (stopping it stops vswitchd): subclasses read the switch here."""

    def _reap(self) -> None:
        # ovs-ctl waits for the old PID to vanish: our child must not linger as a zombie.
        if self.sb.vswitchd_proc is not None:
            self.sb.vswitchd_proc.wait()

    def __exit__(self, *_exc: object) -> None:
        for p in [*self.procs, *(self.load.procs if self.load else [])]:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.stack is not None:
            self.stack.stop()
        self.sb.stop()

    def _probe(self, ep: Endpoint, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(ep.argv([sys.executable, "-m", "ovsndu.testing.probe", *args]))
        self.procs.append(p)
        return p

    def start_traffic(self) -> None:
        w = self.work
        self.recv = self._probe(self.b, "udp-recv", "7000", str(w / "udp.txt"))
        self.forbidden_recv = self._probe(self.a, "udp-recv", "9999", str(w / "forbidden.txt"))
        self.push = self._probe(self.b, "tcp-push", "5001")
        time.sleep(0.5)
        self.sink = self._probe(self.a, "tcp-sink", self.b.ip, "5001", str(w / "tcp.txt"))
        self.send = self._probe(self.a, "udp-send", self.b.ip, "7000", str(RATE),
                                str(w / "sent.txt"))
        self.forbidden_send = self._probe(self.b, "udp-send", self.a.ip, "9999",
                                          str(FORBIDDEN_RATE), str(w / "fsent.txt"))
        self.serve = self._probe(self.b, "udp-serve", "7100", str(SUB_RATE))
        time.sleep(0.2)
        self.subscribe = self._probe(self.a, "udp-subscribe", self.b.ip, "7100",
                                     str(w / "sub.txt"))
        if self.churn:
            self.load = ChurnLoad(self.a, self.b, w, self.churn)
            self.load.start()
        time.sleep(PRE_S)
        # The idle entries must be idle as ovsndu judges it (same wait for both methods).
        time.sleep(max(0.0, self.idle_since + HOT_WINDOW_S + 1 - time.monotonic()))
        self.ct_entries = ct_total(self.sb)

    def stop_traffic(self) -> dict[str, Any]:
        time.sleep(POST_S)
        tcp_before_end = _tcp_bytes(self.work / "tcp.txt")
        time.sleep(0.5)
        tcp_end = _tcp_bytes(self.work / "tcp.txt")
        for p in (self.send, self.forbidden_send, self.serve):
            p.send_signal(signal.SIGTERM)
            p.wait()
        stopped = time.monotonic()
        churn = self.load.stop() if self.load else {}  # after `stopped`: it takes ~0.5 s
        time.sleep(0.2)
        for p in (self.recv, self.forbidden_recv, self.subscribe):
            p.send_signal(signal.SIGTERM)
            p.wait()
        sub = [t for _, t in _arrivals(self.work / "sub.txt")]
        udp_flowing = bool(sub) and sub[-1] > stopped - 0.5
        arrivals = _arrivals(self.work / "udp.txt")
        times = [t for _, t in arrivals]
        seqs = sorted({s for s, _ in arrivals})
        # Only silences that end after the upgrade command started count (traffic's own
        # start-up, e.g. ARP, is not the upgrade's).
        gaps = [b - a if b >= self.t0 else 0.0 for a, b in itertools.pairwise(times)]
        worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else 0
        tcp_text = (self.work / "tcp.txt").read_text() if (self.work / "tcp.txt").exists() else ""
        tcp_ok = "error" not in tcp_text and tcp_end > tcp_before_end
        return {
            **churn,
            "flows": self.n,
            "ct_entries": self.ct_entries,
            "udp_download_survived": udp_flowing,
            "established_survived": (int(tcp_ok) + int(udp_flowing)) / 2,
            "gap_ms": gaps[worst] * 1000 if gaps else None,
            "gap_at": times[worst] if gaps else None,
            "lost": (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else None,
            "tcp_survived": tcp_ok,
            "tcp_error": tcp_text.splitlines()[1] if "error" in tcp_text else "",
            "forbidden_delivered": len(_arrivals(self.work / "forbidden.txt")),
            "arrivals": times,
        }

    # --- the two methods -------------------------------------------------------------------
    def ovsndu_late(self) -> dict[str, Any]:
        """ovsndu with the DPDK build's standby initialising DPDK only once it holds the
        lock, as before ovs/preinit.py (``--preinit-baseline``)."""
        return self.ovsndu(preinit=False)

    def ovsndu(self, preinit: bool = True) -> dict[str, Any]:
        sup, cfg_path = start_supervisor(self.sb, self.work, self.binary, list(NETDEV_ARGS),
                                         upgrade={"timeout": self.UPGRADE_TIMEOUT,
                                                  "standby_preinit": preinit}, wait=30)
        self.procs.append(sup)
        self.before_reload(cfg_path)
        self.start_traffic()
        t0 = self.t0 = time.monotonic()
        with RssSampler(sup.pid) as rss:
            r = subprocess.Popen([sys.executable, "-m", "ovsndu", "reload", "--config",
                                  str(cfg_path), "--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            rss.extra.add(r.pid)
            stdout, stderr = r.communicate()
        t1 = time.monotonic()
        result = json.loads(stdout) if stdout.strip() else {"stderr": stderr}
        out = self.stop_traffic()
        self.after_upgrade(out)
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
        record = result.get("record") or {}
        phases = {}
        offset = time.time() - time.monotonic()
        for p in record.get("phases", []):
            start = datetime.fromisoformat(p["started"]).timestamp() - offset
            phases[p["phase"]] = {"start": start, "seconds": p["duration_s"]}
        out.update(upgrade_s=t1 - t0, start=t0, end=t1, exit_code=r.returncode,
                   outcome=result.get("outcome"), reason=result.get("reason"), phases=phases,
                   handover_ms=record.get("handover_gap_ms"), marks=record.get("marks", {}),
                   gap_offset_s=(out["gap_at"] - t0) if out["gap_at"] else None,
                   peak_rss_mib=rss.result(), **_stalls(out["arrivals"], t0))
        out["handover_silence_ms"] = _silence_at(
            out["arrivals"], phases.get("handover", {}).get("start"),
            (record.get("marks") or {}).get("old_stopped"))
        log = self.sb.rundir / "ovs-vswitchd.log"
        gone = dpdk_run.old_gone_wall(record)
        if self.dpdk_huge and log.exists() and gone is not None:
            out["standby_parts_ms"] = dpdk_run.standby_parts(log.read_text(errors="replace"),
                                                             gone)
        return out

    def upstream(self) -> dict[str, Any]:
        self.start_traffic()
        env = {**self.sb.env, "OVS_RUNDIR": str(self.sb.rundir)}
        if self.dpdk_huge:
            env["OVS_SBINDIR"] = str(dpdk_run.sbindir(self.work))
        t0 = self.t0 = time.monotonic()
        r = subprocess.run(self.sb.ns_argv([OVS_CTL, "--no-ovsdb-server", "--no-monitor",
                                            "--system-id=random", "--no-record-hostname",
                                            f"--db-sock={self.sb.db_sock}", "restart"]),
                           env=env, capture_output=True, text=True, check=False)
        t1 = time.monotonic()
        out = self.stop_traffic()
        self.after_upgrade(out)
        out.update(upgrade_s=t1 - t0, start=t0, end=t1, exit_code=r.returncode,
                   reason=r.stderr.strip()[-300:] if r.returncode else "",
                   handover_silence_ms=out["gap_ms"],  # the restart's silence is the gap
                   **_stalls(out["arrivals"], t0))
        return out


def _silence_at(arrivals: list[float], phase_start: float | None,
                stopped_ms: float | None) -> float | None:
    """The handover's own silence of the A→B stream, ms: the longest one that begins
    within 50 ms of the moment the old process was stopped (that moment comes from the
    record's wall clock: a few ms off).  ``gap_ms`` is the longest anywhere, e.g. a
    conntrack read holding vswitchd's main thread."""
    if phase_start is None or stopped_ms is None:
        return None
    stop = phase_start + stopped_ms / 1000
    near = [b - a for a, b in itertools.pairwise(arrivals) if abs(a - stop) <= 0.05]
    return round(max(near) * 1000, 2) if near else None


STALL_S = 0.02


def _stalls(arrivals: list[float], t0: float) -> dict[str, Any]:
    """Every silence of the A→B stream longer than 20 ms (the longest gap is only one of
    them): ``stalled_ms`` their sum, ``stalls`` (seconds after the command, ms) each."""
    gaps = [(a - t0, (b - a) * 1000) for a, b in itertools.pairwise(arrivals)
            if b - a > STALL_S and b >= t0]
    return {"stalled_ms": round(sum(g for _, g in gaps), 1),
            "stalls": [(round(t, 3), round(g, 1)) for t, g in gaps]}


def _rss_text(res: dict[str, Any]) -> str:
    rss = res.get("peak_rss_mib")
    return f"rss {rss['total']:.0f} MiB, " if rss else ""


def _vswitchd() -> str:
    for path in ("/usr/sbin/ovs-vswitchd", "/usr/lib/openvswitch-switch/ovs-vswitchd"):
        if os.path.exists(path):
            return path
    return "ovs-vswitchd"


_status = supervisor_status
_wait_for = wait_for


def _arrivals(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().split("\n"):
        if line.strip():
            seq, t = line.split()
            out.append((int(seq), float(t)))
    return sorted(out, key=lambda x: x[1])


def _tcp_bytes(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _median(values: list[float]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def main() -> None:
    # ovs-ctl raises its descriptor limit to 65535 (and complains when the hard limit is lower).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", default="1000,50000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--conntrack", type=int, default=0,
                        help="idle conntrack entries besides the measured connections")
    parser.add_argument("--ct-zones", type=int, default=ZONES, metavar="Z",
                        help=f"zones the idle entries are spread over (default {ZONES}): "
                        "a userspace datapath's conntrack is read a zone at a time")
    parser.add_argument("--datapath", choices=("netdev", "dpdk"), default="netdev")
    parser.add_argument("--churn", type=float, default=0.0, metavar="RATE",
                        help="new connections a second all through each run (benchmarks.churn)")
    parser.add_argument("--ovn", action="store_true",
                        help="the pipeline comes from a private OVN stack (--flows ignored)")
    parser.add_argument("--preinit-baseline", action="store_true",
                        help="also run ovsndu with [upgrade] standby_preinit = false "
                        "(method ovsndu_late)")
    parser.add_argument("--methods", default="ovsndu,upstream",
                        help="comma-separated; ratios need both ovsndu and upstream")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        huge = (stack.enter_context(hugepages(dpdk_run.PAGES)) if args.datapath == "dpdk"
                else None)
        _measure(args, huge)


def _measure(args: argparse.Namespace, huge: Path | None) -> None:
    report: dict[str, Any] = {"rate_pps": RATE, "conntrack": args.conntrack,
                              "ct_zones": args.ct_zones,
                              "datapath": args.datapath, "churn": args.churn,
                              "pipeline": "ovn" if args.ovn else "filler", "by_flows": {}}
    examples: dict[str, dict[str, Any]] = {}
    methods = (*args.methods.split(","), *(("ovsndu_late",) if args.preinit_baseline else ()))
    for asked in [0] if args.ovn else map(int, args.flows.split(",")):
        n = asked  # with --ovn: what ovn-controller installed, known after the first run
        per: dict[str, dict[str, list[Any]]] = {
            m: {"gap_ms": [], "lost": [], "tcp_survived": [], "forbidden_delivered": [],
                "upgrade_s": [], "exit_code": [], "phases": [], "handover_ms": [], "marks": [],
                "ct_entries": [], "established_survived": [], "peak_rss_mib": [],
                "stalled_ms": [], "stalls": [], "standby_parts_ms": [],
                "handover_silence_ms": [],
                **({k: [] for k in CHURN_KEYS} if args.churn else {})}
            for m in methods}
        for k in range(args.runs):
            order = methods if k % 2 == 0 else methods[::-1]
            for method in order:
                with tempfile.TemporaryDirectory(prefix="ovsndu-disr-") as tmp, \
                        Run(Path(tmp), asked, args.conntrack, args.churn, args.ovn,
                            dpdk_huge=huge, ct_zones=args.ct_zones) as run:
                    res = getattr(run, method)()
                n = res["flows"]
                for key in per[method]:
                    if key in res:
                        per[method][key].append(
                            {p: v["seconds"] for p, v in res[key].items()}
                            if key == "phases" else res[key])
                examples.setdefault(f"{method} {n}", res)
                print(f"N={n} run {k + 1} {method:8}: gap {res['gap_ms']:.0f} ms, "
                      f"lost {res['lost']}, tcp {'kept' if res['tcp_survived'] else 'LOST'}"
                      f"{' (' + res['tcp_error'] + ')' if res.get('tcp_error') else ''}, "
                      f"forbidden {res['forbidden_delivered']}, "
                      f"ct {res['ct_entries']}, survived {res['established_survived']:.1f}, "
                      f"stalled {res['stalled_ms']:.0f} ms in {len(res['stalls'])}, "
                      f"handover silence {res.get('handover_silence_ms')} ms, "
                      f"{_rss_text(res)}{churn_text(res)}"
                      f"{res['upgrade_s']:.2f} s, exit {res['exit_code']}"
                      f"{' ' + str(res.get('reason')) if res['exit_code'] else ''}"
                      f"{' marks ' + json.dumps(res['marks']) if res.get('marks') else ''}",
                      flush=True)
        ours, theirs = (_median(per[m]["gap_ms"]) if m in per else None
                        for m in ("ovsndu", "upstream"))
        ratio = ours / theirs if ours is not None and theirs else None
        report["by_flows"][str(n)] = {**per, "gap_ratio_median": ratio}
        print(f"N={n}: median gap ovsndu {ours} ms, upstream {theirs} ms, ratio {ratio}",
              flush=True)
        silence = _median(per["ovsndu"]["handover_silence_ms"]) if "ovsndu" in per else None
        report["by_flows"][str(n)]["handover_silence_median"] = silence
        print(f"N={n}: median handover silence ovsndu {silence} ms", flush=True)
        if "ovsndu_late" in per:
            late = _median(per["ovsndu_late"]["gap_ms"])
            report["by_flows"][str(n)]["late_ratio_median"] = (
                late / theirs if late is not None and theirs else None)
            print(f"N={n}: median gap ovsndu_late {late:.0f} ms, ratio "
                  f"{late / theirs:.2f}" if late is not None and theirs else "", flush=True)
    report["loadavg_at_end"] = os.getloadavg()  # the machine's load (other work) at the end
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(examples, args.plot)


def plot(examples: dict[str, dict[str, Any]], path: str) -> None:
    """Packet arrivals against time, one panel per method and size, phases shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(examples), 1, figsize=(11, 2.6 * len(examples)), squeeze=False)
    for ax, (name, res) in zip(axes[:, 0], sorted(examples.items()), strict=True):
        t0 = res["start"]
        xs = [t - t0 for t in res["arrivals"]]
        ax.plot(xs, range(len(xs)), ",", color="tab:blue")
        ax.axvspan(0, res["end"] - t0, color="0.9", label="upgrade command")
        for i, (phase, v) in enumerate(sorted(res.get("phases", {}).items(),
                                              key=lambda kv: kv[1]["start"])):
            ax.axvline(v["start"] - t0, color=f"C{i + 1}", lw=0.8)
            ax.text(v["start"] - t0, 0, phase, rotation=90, fontsize=7, va="bottom")
        ax.set_title(f"{name}: longest gap {res['gap_ms']:.0f} ms, lost {res['lost']}",
                     fontsize=9)
        ax.set_xlabel("seconds since the upgrade command")
        ax.set_ylabel("packets")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
