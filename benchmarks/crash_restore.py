"""A crashed vswitchd: time back to forwarding through the full pipeline, and what keeping
the last known state costs while idle.

    .venv/bin/python -m benchmarks.crash_restore [--flows N] [--runs K] [--idle S] [--json OUT]

Crash: the disruption benchmark's set-up (private netdev OVS, endpoints A and B on veths,
N filler rules plus a stateful ACL in ``fail_mode=secure``, UDP A→B at 2000 pkt/s, an
established TCP download B→A, a forbidden UDP flow B→A), a real supervisor, then
``kill -9`` of the serving vswitchd.  Measured: the longest gap in the UDP arrivals
(crash → forwarding again through the ACL), packets lost, whether the TCP download
survived, forbidden packets delivered.  The upstream baseline is what ``ovs-ctl
--monitor`` does: start the daemon again, empty (in ``fail_mode=secure`` nothing is
forwarded until a controller or an operator puts the tables back).

Idle: the supervisor with N rules for S seconds, nothing happening; CPU seconds of the
supervisor (its own and its children's: the ovs-ofctl dumps) and of vswitchd over the
window, against vswitchd alone (no supervisor) over a window of the same length.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import start_supervisor
from benchmarks.disruption import OVS_CTL, Run, _median, _status, _vswitchd, _wait_for
from ovsndu.ovs.sandbox import NETDEV_ARGS

TICK = 100.0  # clock ticks per second (/proc/PID/stat)


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime (+ reaped children's) of *pid*, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])
    return (own + (int(fields[13]) + int(fields[14]) if children else 0)) / TICK


class CrashRun(Run):
    """One sandbox; the supervisor or upstream's monitor faces a vswitchd crash."""

    def start_supervisor(self) -> tuple[subprocess.Popen[bytes], Path]:
        sup, cfg_path = start_supervisor(self.sb, self.work, _vswitchd(), list(NETDEV_ARGS))
        self.procs.append(sup)
        return sup, cfg_path

    def serving_pid(self) -> int:
        return int((self.sb.rundir / "ovs-vswitchd.pid").read_text())

    def ovsndu(self) -> dict[str, Any]:
        sup, cfg_path = self.start_supervisor()
        old = self.serving_pid()
        _wait_for(lambda: (_status(cfg_path).get("last_known_state") or {})
                  .get("vswitchd_pid") == old, 60)
        self.start_traffic()
        # The connections just opened are in the snapshot: any OpenFlow request makes the
        # supervisor take a new one within ~2 s (else the 60 s refresh would).
        taken = (_status(cfg_path).get("last_known_state") or {}).get("snapshots", 0)
        subprocess.run(self.sb.ns_argv(["ovs-ofctl", "show", "br0"]), env=self.sb.env,
                       capture_output=True, check=True)
        _wait_for(lambda: (_status(cfg_path).get("last_known_state") or {})
                  .get("snapshots", 0) > taken, 30)
        t0 = time.monotonic()
        signal_kill(old)
        _wait_for(lambda: (_status(cfg_path).get("vswitchd") or {}).get("pid")
                  not in (None, old), 60)
        t1 = time.monotonic()
        out = self.stop_traffic()
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
        out.update(restart_s=t1 - t0, gap_offset_s=(out["gap_at"] - t0) if out["gap_at"]
                   else None)
        return out

    def upstream(self) -> dict[str, Any]:
        self.start_traffic()
        env = {**self.sb.env, "OVS_RUNDIR": str(self.sb.rundir)}
        old = self.serving_pid()
        t0 = time.monotonic()
        signal_kill(old)
        if self.sb.vswitchd_proc is not None:
            self.sb.vswitchd_proc.wait()
        r = subprocess.run(self.sb.ns_argv([OVS_CTL, "--no-ovsdb-server", "--no-monitor",
                                            "--system-id=random", "--no-record-hostname",
                                            f"--db-sock={self.sb.db_sock}", "start"]),
                           env=env, capture_output=True, text=True, check=False)
        t1 = time.monotonic()
        out = self.stop_traffic()
        arrivals_after = [t for t in out["arrivals"] if t > t0]
        out.update(restart_s=t1 - t0, exit_code=r.returncode,
                   forwarded_after_crash=len(arrivals_after))
        if not arrivals_after:  # never forwarded again: the gap is the rest of the window
            out["gap_ms"] = None
        return out

    def idle(self, seconds: float) -> dict[str, Any]:
        vs = self.serving_pid()
        v0, w0 = cpu_seconds(vs), time.monotonic()
        time.sleep(seconds)
        alone = (cpu_seconds(vs) - v0) / (time.monotonic() - w0)
        sup, cfg_path = self.start_supervisor()
        vs = self.serving_pid()
        time.sleep(5)  # past the first snapshot
        s0, v0, w0 = cpu_seconds(sup.pid, children=True), cpu_seconds(vs), time.monotonic()
        taken0 = (_status(cfg_path).get("last_known_state") or {}).get("snapshots", 0)
        time.sleep(seconds)
        wall = time.monotonic() - w0
        s1, v1 = cpu_seconds(sup.pid, children=True), cpu_seconds(vs)
        taken = (_status(cfg_path).get("last_known_state") or {}).get("snapshots", 0) - taken0
        sup.send_signal(signal.SIGTERM)
        sup.wait(timeout=60)
        return {"seconds": wall, "supervisor_core_pct": 100 * (s1 - s0) / wall,
                "vswitchd_core_pct": 100 * (v1 - v0) / wall,
                "vswitchd_alone_core_pct": 100 * alone, "snapshots": taken}


def signal_kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=120.0, help="idle window, seconds")
    parser.add_argument("--json")
    args = parser.parse_args()
    report: dict[str, Any] = {"flows": args.flows, "runs": {"ovsndu": [], "upstream": []}}
    for k in range(args.runs):
        for method in ("ovsndu", "upstream"):
            with tempfile.TemporaryDirectory(prefix="ovsndu-crash-") as tmp, \
                    CrashRun(Path(tmp), args.flows) as run:
                res = getattr(run, method)()
            res.pop("arrivals", None)
            report["runs"][method].append(res)
            gap = "never resumed" if res["gap_ms"] is None else f"{res['gap_ms']:.0f} ms"
            print(f"run {k + 1} {method:8}: gap {gap}, lost {res['lost']}, "
                  f"tcp survived {res['tcp_survived']}, forbidden delivered "
                  f"{res['forbidden_delivered']}"
                  + (f", forwarded after the crash {res['forwarded_after_crash']}"
                     if method == "upstream" else f", back in {res['restart_s']:.2f} s"),
                  flush=True)
    ours = [r for r in report["runs"]["ovsndu"] if r["gap_ms"] is not None]
    report["ovsndu_gap_ms_median"] = _median([r["gap_ms"] for r in ours])
    if args.idle > 0:
        with tempfile.TemporaryDirectory(prefix="ovsndu-idle-") as tmp, \
                CrashRun(Path(tmp), args.flows) as run:
            report["idle"] = run.idle(args.idle)
        i = report["idle"]
        print(f"idle {i['seconds']:.0f} s with {args.flows} rules: supervisor "
              f"{i['supervisor_core_pct']:.2f} % of a core ({i['snapshots']} snapshots), "
              f"vswitchd {i['vswitchd_core_pct']:.2f} % "
              f"(alone {i['vswitchd_alone_core_pct']:.2f} %)")
    print(f"median crash → forwarding gap: {report['ovsndu_gap_ms_median']:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
