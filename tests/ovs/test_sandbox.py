"""The private OVS sandbox starts real daemons and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ovsndu.ovs.sandbox import Sandbox, sweep_stale_namespaces
from ovsndu.ovs.unixctl import pid_alive
from tests.conftest import require_ovs


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_dummy_sandbox_paths_and_clean_stop() -> None:
    """Sockets exist while running; processes and the run directory are gone after."""
    require_ovs()
    with Sandbox() as sb:
        pids = [sb.vswitchd_pid, sb.ovsdb_proc.pid]  # type: ignore[union-attr]
        sb.vsctl("add-br", "br0")
        assert sb.db_sock.is_socket()
        assert sb.unixctl_path.is_socket()
        assert sb.mgmt_path("br0").is_socket()
        assert "Open vSwitch" in sb.appctl("version")
        rundir = sb.rundir
    assert not any(pid_alive(p) for p in pids)
    assert not rundir.exists()


def test_netdev_sandbox_lives_in_its_namespace() -> None:
    """A netdev bridge's taps live in the sandbox's namespace, which is deleted on stop."""
    require_ovs()
    with Sandbox(datapath="netdev") as sb:
        assert sb.netns in _namespaces()
        sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
        links = sb.run(["ip", "-o", "link", "show"])
        assert "ovs-netdev" in links
        assert "br0" in links
        host_links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                                    text=True, check=True).stdout
        assert "ovs-netdev" not in host_links
        ns, pid = sb.netns, sb.vswitchd_pid
    assert ns not in _namespaces()
    assert not pid_alive(pid)


def test_killed_creator_leaks_nothing(tmp_path: Path) -> None:
    """SIGKILL of the creating process kills the daemons; the next start sweeps its namespace."""
    require_ovs()
    script = textwrap.dedent(f"""
        import sys, time
        from ovsndu.ovs.sandbox import Sandbox
        sb = Sandbox({str(tmp_path / 'run')!r}, datapath="netdev")
        sb.start()
        print(sb.netns, sb.vswitchd_pid, sb.ovsdb_proc.pid, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ns, *pids = proc.stdout.readline().split()
    assert ns in _namespaces()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(pid_alive(int(p)) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(int(p)) for p in pids)
    assert ns in sweep_stale_namespaces()
    assert ns not in _namespaces()
