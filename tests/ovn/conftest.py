"""A private OVN stack on a sandbox whose vswitchd a real ``ovsndu supervise`` owns.

The sandbox runs the netdev datapath in its own namespace; the OVN stack
(:mod:`ovsndu.testing.ovn`) drives its br-int; the supervisor adopts the running
vswitchd, as on a host where OVN was set up before ovsndu.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ovsndu.config import Config
from ovsndu.ovs.sandbox import NETDEV_ARGS, Sandbox
from ovsndu.testing.ovn import OvnStack, missing_ovn
from tests.conftest import require_ovs
from tests.upgrade.conftest import VSWITCHD, Rig


def require_ovn() -> None:
    """Fail in CI, skip elsewhere, when OVN (ovn-central, ovn-host) is not installed."""
    require_ovs()
    reason = missing_ovn()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and this test {reason}")
    pytest.skip(f"{reason}; CI is unset, so skipping (in CI this fails)")


@dataclass
class OvnRig:
    """The supervised sandbox and the OVN stack on its br-int."""

    rig: Rig
    ovn: OvnStack
    work: Path


@contextlib.contextmanager
def make_ovn_rig(tmp_path: Path) -> Iterator[OvnRig]:
    """Sandbox (netdev), OVN stack, supervisor; everything stopped by PID afterwards."""
    require_ovn()
    with Sandbox(tmp_path / "run", datapath="netdev") as sb, \
            OvnStack(sb, tmp_path / "ovn") as ovn:
        # The sandbox's vswitchd is our child: reap it as soon as an upgrade kills it.
        proc = sb.vswitchd_proc
        if proc is not None:
            threading.Thread(target=proc.wait, daemon=True).start()
        cfg = Config.from_dict({
            "ovs": {"rundir": str(sb.rundir), "db": sb.db, "vswitchd": VSWITCHD,
                    "vswitchd_args": list(NETDEV_ARGS), "netns": sb.netns or ""},
            "upgrade": {"timeout": 300},
            "ovsndu": {"state_dir": str(tmp_path / "state")},
        })
        cfg_path = tmp_path / "ovsndu.toml"
        cfg_path.write_text(cfg.to_toml())
        rig = Rig(sb, cfg, cfg_path, None, tmp_path / "supervisor.log", {})  # type: ignore[arg-type]
        rig.start_supervisor()
        try:
            yield OvnRig(rig, ovn, tmp_path / "traffic")
        finally:
            rig.stop_supervisor()
            for pid in rig.vswitchd_pids():  # ovn-controller names the database too
                if pid == ovn.controller_pid:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


_SPENT: list[float] = []


@pytest.fixture(name="ovn_rig")
def _ovn_rig(tmp_path: Path) -> Iterator[OvnRig]:
    started = time.monotonic()
    try:
        with make_ovn_rig(tmp_path) as r:
            yield r
    finally:
        _SPENT.append(time.monotonic() - started)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A heavy group says what it cost."""
    if _SPENT:
        terminalreporter.write_line(f"tests/ovn: {len(_SPENT)} OVN rigs, "
                                    f"{sum(_SPENT):.0f} s in all")
