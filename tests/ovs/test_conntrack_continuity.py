"""An established TCP connection through ct_state=+est rules survives a vswitchd restart
only when its conntrack entry is restored (real kernel TCP endpoints, netdev bridge).

The stream is a download: A connects to B (allowed as new), then only B sends data.
Userspace conntrack picks up mid-stream TCP as a new connection, so after a restart
without the entry B's packets are +new from port 2, which the ACL drops."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.model import Snapshot
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.restore import restore_snapshot
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.endpoints import add_endpoint
from tests.conftest import require_ovs

ACL = (
    "table=0,priority=100,arp,actions=NORMAL",
    "table=0,priority=100,ip,actions=ct(table=1,zone=3)",
    "table=1,priority=100,ct_state=+trk+new,ip,in_port=1,actions=ct(commit,zone=3),output:2",
    "table=1,priority=100,ct_state=+trk+est,ip,in_port=1,actions=output:2",
    "table=1,priority=100,ct_state=+trk+est,ip,in_port=2,actions=output:1",
    "table=1,priority=0,actions=drop",
)


def _progress(path: Path) -> tuple[int, str]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0, ""
    return (int(lines[0]) if lines and lines[0].isdigit() else 0,
            lines[1] if len(lines) > 1 else "")


def _wait_progress(path: Path, beyond: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _progress(path)[0] > beyond + 5 * 64:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(name="stateful")
def _stateful(tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    """A netdev bridge with a stateful ACL between A and B, and a TCP stream A → B running."""
    require_ovs()
    procs: list[subprocess.Popen[bytes]] = []
    with Sandbox(tmp_path / "run", datapath="netdev") as sb:
        sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
                 "fail_mode=secure")
        a = add_endpoint(sb, "br0", "a-sw", "10.0.0.1", 1)
        b = add_endpoint(sb, "br0", "b-sw", "10.0.0.2", 2)
        sb.ofctl("br0", "add-flows", "-", input_text="\n".join(ACL) + "\n")
        progress = tmp_path / "progress"
        try:
            procs.append(subprocess.Popen(b.argv([sys.executable, "-m", "ovsndu.testing.probe",
                                                  "tcp-push", "5001"])))
            time.sleep(0.5)
            procs.append(subprocess.Popen(a.argv([sys.executable, "-m", "ovsndu.testing.probe",
                                                  "tcp-sink", b.ip, "5001", str(progress)])))
            assert _wait_progress(progress, 0, 10), _progress(progress)
            yield sb, progress
        finally:
            for p in procs:
                p.kill()
                p.wait()


def _restart_and_restore(sb: Sandbox, snap: Snapshot) -> None:
    sb.restart_vswitchd(flow_restore_wait=True)
    restore_snapshot(snap, sb.rundir, sb.db)
    sb.vsctl("remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")


def test_restored_entry_keeps_the_connection(stateful: tuple[Sandbox, Path]) -> None:
    """With its conntrack entry replayed, the established connection keeps flowing."""
    sb, progress = stateful
    snap = read_snapshot(sb.rundir, sb.db)
    (entry,) = [c for c in snap.categories["conntrack"] if "dport=5001" in c.orig]  # type: ignore[attr-defined]
    assert entry.state == "ESTABLISHED/ESTABLISHED"  # type: ignore[attr-defined]
    _restart_and_restore(sb, snap)
    at = _progress(progress)[0]
    assert _wait_progress(progress, at, 10), f"connection stalled: {_progress(progress)}"
    assert _progress(progress)[1] == ""


def test_without_the_entry_the_connection_is_cut(stateful: tuple[Sandbox, Path]) -> None:
    """Everything but conntrack restored: the ACL drops the stream as not established."""
    sb, progress = stateful
    snap = read_snapshot(sb.rundir, sb.db)
    _restart_and_restore(sb, snap.replace("conntrack", ()))
    at = _progress(progress)[0]
    assert not _wait_progress(progress, at, 4), "traffic flowed without its conntrack entry"
