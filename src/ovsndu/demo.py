"""The embedded default job: a whole live upgrade in a private OVS sandbox.

A sandbox (dummy datapath, its own run directory) gets sample state in every
category; a real supervisor adopts its vswitchd; ``ovsndu reload`` upgrades it to a
fresh copy of the binary; a per-category before/after table and the phase timings
show what was kept and how long the handover took.  Nothing on the host changes.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ovsndu.config import Config
from ovsndu.control import SupervisorUnreachable, request
from ovsndu.errors import OvsnduError
from ovsndu.model import CATEGORIES
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import DUMMY_ARGS, Sandbox
from ovsndu.render import table
from ovsndu.testing.sample import populate


def _wait_supervisor(cfg: Config, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OvsnduError(f"the supervisor exited: {log.read_text()[-500:]}")
        try:
            if request(cfg.ovsndu.control_socket, {"op": "status"}, timeout=5)["phase"] == "idle":
                return
        except SupervisorUnreachable:
            pass
        time.sleep(0.1)
    raise OvsnduError("the supervisor did not become ready in 30 s")


def run_demo(*, keep: bool = False) -> int:
    """Sandbox → sample state → supervisor → live upgrade → before/after table."""
    vswitchd = shutil.which("ovs-vswitchd") or "/usr/sbin/ovs-vswitchd"
    work = Path(tempfile.mkdtemp(prefix="ovsndu-demo-"))
    try:
        with Sandbox(work / "run") as sb:
            print(f"sandbox {sb.rundir} (dummy datapath)")
            populate(sb)
            before = read_snapshot(sb.rundir, sb.db)
            new_binary = work / "ovs-vswitchd-new"
            shutil.copy2(vswitchd, new_binary)
            cfg = Config.from_dict({
                "ovs": {"rundir": str(sb.rundir), "db": sb.db, "vswitchd": vswitchd,
                        "vswitchd_args": list(DUMMY_ARGS)},
                "ovsndu": {"state_dir": str(work / "state")},
            })
            cfg_path = work / "ovsndu.toml"
            cfg.write(cfg_path)
            log = work / "supervisor.log"
            with open(log, "wb") as out:
                sup = subprocess.Popen([sys.executable, "-m", "ovsndu", "supervise", "--config",
                                        str(cfg_path)], stdout=out, stderr=out)
            try:
                _wait_supervisor(cfg, sup, log)
                print(f"supervisor pid {sup.pid} adopted vswitchd pid {before.vswitchd.pid}")
                print(f"\n$ ovsndu reload --vswitchd {new_binary}")
                result = request(cfg.ovsndu.control_socket,
                                 {"op": "reload", "vswitchd": str(new_binary)},
                                 on_event=_show_phase)
                after = read_snapshot(sb.rundir, sb.db)
                _report(before, after, result)
                if keep:
                    input(f"\nconfig {cfg_path}; press Enter to stop ")
            finally:
                sup.send_signal(signal.SIGTERM)
                sup.wait(timeout=30)
        return 0 if result.get("exit_code") == 0 else int(result.get("exit_code") or 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _show_phase(event: dict[str, object]) -> None:
    if event.get("event") in ("phase_done", "phase_failed"):
        seconds = event.get("seconds")
        assert isinstance(seconds, int | float)
        verdict = "ok" if event["event"] == "phase_done" else f"FAILED: {event.get('reason')}"
        print(f"  {event['phase']:<11} {verdict:<6} {seconds * 1000:8.1f} ms", flush=True)


def _report(before: object, after: object, result: dict[str, object]) -> None:
    from ovsndu.model import Snapshot

    assert isinstance(before, Snapshot)
    assert isinstance(after, Snapshot)
    record = result.get("record")
    assert isinstance(record, dict)
    print(f"\noutcome: {result.get('outcome')} (exit {result.get('exit_code')})"
          f"{': ' + str(result.get('reason')) if result.get('reason') else ''}")
    print(f"vswitchd pid {before.vswitchd.pid} -> {after.vswitchd.pid}\n")
    rows = [(name, len(before.categories[name]), len(after.categories[name]),
             before.digest(name)[:12], after.digest(name)[:12],
             "equal" if before.digest(name) == after.digest(name) else "DIFFERENT")
            for name in CATEGORIES]
    print(table(("category", "before", "after", "digest before", "digest after", ""), rows))
    gap = record.get("handover_gap_ms")
    total = sum(float(p["duration_s"]) for p in record.get("phases", []))
    if gap is not None:
        print(f"\nhandover (old vswitchd stopped → state installed in the new one and "
              f"flow-restore-wait lifted): {float(gap):.1f} ms; whole upgrade {total:.2f} s")
    print("\nhistory record:", json.dumps({k: record[k] for k in ("id", "from_version",
                                                                  "to_version", "outcome")}))
