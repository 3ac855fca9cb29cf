"""A plain build's standby measures the TSC before the handover (ovs/preinit.py).

OVS 3.1 measures the TSC frequency for 100 ms when a process creates its first
userspace datapath: for a standby, at the takeover, inside the gap.  ovsndu has the
standby, on a private database, create and delete a datapath of its own first.  Judged
by the new process's own log (its one "Estimated TSC frequency" line comes before it
says it waits on the live lock), by the tools' raw output before and after, and by what
is left in vswitchd's network namespace (no tap of that datapath).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ovsndu.config import Config
from ovsndu.ovs import preinit
from ovsndu.ovs.sandbox import NETDEV_ARGS, Sandbox
from ovsndu.upgrade import leftovers
from tests.conftest import require_ovs
from tests.upgrade.conftest import VSWITCHD, Rig, supervised

ESTIMATED = "pmd_perf|INFO|Estimated TSC frequency"


@contextlib.contextmanager
def _netdev_rig(tmp_path: Path, **upgrade: Any) -> Iterator[Rig]:
    require_ovs()
    with Sandbox(tmp_path / "run", datapath="netdev", vswitchd_args=NETDEV_ARGS) as sb:
        sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
        sb.ofctl("br0", "add-flows", "-", input_text="priority=5,ip,actions=NORMAL\n"
                 "priority=0,actions=drop\n")
        cfg = Config.from_dict({
            "ovs": {"rundir": str(sb.rundir), "db": sb.db, "vswitchd": VSWITCHD,
                    "vswitchd_args": list(NETDEV_ARGS), "netns": sb.netns or ""},
            "upgrade": {"timeout": 120, **upgrade},
            "ovsndu": {"state_dir": str(tmp_path / "state")},
        })
        with supervised(sb, cfg, tmp_path) as rig:
            yield rig


def _remote(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1].decode().split(",")[0]


def _tsc_taps(rig: Rig) -> list[str]:
    out = rig.sb.run(["ip", "-o", "link", "show"])
    return [ln.split(":")[1].strip() for ln in out.splitlines()
            if ln.split(":")[1].strip().startswith(preinit.TSC_DP_PREFIX)]


def tsc_measured_early(result: dict[str, Any], log: Path, pid: int, before: int) -> None:
    """New process *pid* measured the TSC once, before it waited on the live lock
    (*before*: the log's estimate lines before the reload)."""
    marks = result["record"]["marks"]
    assert marks["preinit.tsc"] > 0, marks
    assert marks["preinit.initialised"] >= marks["preinit.tsc"], marks
    assert marks["preinit.reconnected"] > 0, marks
    text = log.read_text(errors="replace")
    assert text.count(ESTIMATED) == before + 1
    assert text.rindex(ESTIMATED) < text.rindex(preinit.CONTENDED.format(pid=pid))


def test_plain_standby_measures_the_tsc_before_the_handover(tmp_path: Path) -> None:
    """Two reloads: each new process measured its TSC before it waited on the live lock,
    reaches the live database through its link, holds the same flows, and left no tap;
    the second reload starts from a process that itself was preinitialised."""
    with _netdev_rig(tmp_path) as rig:
        log = rig.sb.rundir / "ovs-vswitchd.log"
        flows = rig.sb.ofctl("br0", "dump-flows", options=("--no-stats",))
        for _ in range(2):
            before = log.read_text(errors="replace").count(ESTIMATED)
            old = rig.status()["vswitchd"]["pid"]
            code, result = rig.reload()
            assert code == 0, result
            pid = rig.status()["vswitchd"]["pid"]
            assert pid != old and rig.vswitchd_pids() == [pid]
            tsc_measured_early(result, log, pid, before)
            assert _remote(pid) != rig.sb.db  # the link, now leading to the live database
            assert rig.sb.ofctl("br0", "dump-flows", options=("--no-stats",)) == flows
            assert _tsc_taps(rig) == []
            assert preinit.orphans(Path(rig.cfg.ovsndu.state_dir)) == []


def test_preinit_off_measures_in_the_gap(tmp_path: Path) -> None:
    """``[upgrade] standby_preinit = false``: the new process is started on the live
    database and measures its TSC only after it took the lock."""
    with _netdev_rig(tmp_path, standby_preinit=False) as rig:
        log = rig.sb.rundir / "ovs-vswitchd.log"
        code, result = rig.reload()
        assert code == 0, result
        pid = rig.status()["vswitchd"]["pid"]
        assert not any(m.startswith("preinit.") for m in result["record"]["marks"])
        assert _remote(pid) == rig.sb.db
        text = log.read_text(errors="replace")
        assert text.rindex(ESTIMATED) > text.rindex(preinit.CONTENDED.format(pid=pid))


def test_sweep_removes_the_tap_of_a_gone_standby_only(tmp_path: Path) -> None:
    """A tap named after a standby that is gone (a supervisor killed during the ~0.1 s
    it exists) is removed by the sweep; one named after a live vswitchd is not."""
    with _netdev_rig(tmp_path) as rig:
        netns = rig.cfg.ovs.netns
        gone = subprocess.Popen(["true"])
        gone.wait()
        live = rig.status()["vswitchd"]["pid"]
        for pid in (gone.pid, live):
            rig.sb.run(["ip", "tuntap", "add", "mode", "tap", "name",
                        preinit.tsc_datapath(pid)])
        try:
            removed = leftovers.sweep(Path(rig.cfg.ovsndu.state_dir), netns)
            assert f"tap {preinit.tsc_datapath(gone.pid)}" in removed
            assert _tsc_taps(rig) == [preinit.tsc_datapath(live)]
        finally:
            preinit.remove_tap(preinit.tsc_datapath(live), netns)
            preinit.remove_tap(preinit.tsc_datapath(gone.pid), netns)
