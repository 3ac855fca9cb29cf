"""Online schema conversion on a real netdev switch carrying UDP traffic.

The serving 3.1 vswitchd keeps forwarding while its database is converted 8.3.1 →
8.8.0 and back, ``_Server`` is refreshed and it reconnects: measured with the probes
(sequence-numbered datagrams at 1000/s), judged by the datagrams' arrival times.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.ovs import dbschema
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.endpoints import add_endpoint
from ovsndu.upgrade.conversion import SchemaStep
from tests.conftest import require_ovs
from tests.upgrade.test_versions import OVS35, require_ovs35

RATE = 1000.0
# A vswitchd cut off its database backs off 1 s (and its netdev ports stall): that is
# what must not happen.  Below it, gaps are scheduling on a busy 2-core machine.
STALL_MS = 500.0


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


@pytest.fixture(name="flowing")
def _flowing(tmp_path: Path) -> Iterator[tuple[Sandbox, Path, subprocess.Popen[bytes]]]:
    require_ovs()
    require_ovs35()
    with Sandbox(tmp_path / "run", datapath="netdev") as sb:
        sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
        a = add_endpoint(sb, "br0", "a-sw", "10.0.0.1", 1)
        b = add_endpoint(sb, "br0", "b-sw", "10.0.0.2", 2)
        sb.ofctl("br0", "add-flows", "-", input_text="priority=10,actions=NORMAL\n")
        got, sent = tmp_path / "recv", tmp_path / "sent"  # written when the probes stop
        probe = [sys.executable, "-m", "ovsndu.testing.probe"]
        recv = subprocess.Popen(b.argv([*probe, "udp-recv", "5002", str(got)]))
        time.sleep(0.3)
        send = subprocess.Popen(a.argv([*probe, "udp-send", b.ip, "5002", str(RATE), str(sent)]))
        try:
            time.sleep(1.0)  # ARP resolved, traffic steady
            yield sb, got, recv
        finally:
            _stop(send)
            _stop(recv)


def _arrivals(path: Path) -> list[float]:
    return [float(ln.split()[1]) for ln in path.read_text().splitlines() if ln.strip()]


def test_conversion_keeps_forwarding(
        flowing: tuple[Sandbox, Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    sb, got, recv = flowing
    pid = sb.vswitchd_pid
    sb.appctl("vlog/set", "ovsdb_cs:file:dbg")
    sb.appctl("vlog/set", "reconnect:file:dbg")
    step = SchemaStep(sb.rundir, sb.db, tmp_path / "work", tmp_path / "backups", "t1")
    step.plan(OVS35 / "vswitch.ovsschema")
    assert step.record["action"] == "convert"
    t0 = time.monotonic()
    step.apply(pid)
    t1 = time.monotonic()
    assert dbschema.live_schema(sb.db)[0].version == "8.8.0"
    assert dbschema.advertised_version(sb.db) == "8.8.0"
    step.revert(pid)
    t2 = time.monotonic()
    assert dbschema.live_schema(sb.db)[0].version == "8.3.1"
    assert dbschema.advertised_version(sb.db) == "8.3.1"
    assert sb.vswitchd_pid == pid  # the same process throughout
    time.sleep(0.2)
    _stop(recv)  # it writes what arrived when it stops
    arrivals = _arrivals(got)
    window = [t for t in arrivals if t0 - 0.05 <= t <= t2 + 0.05]
    gaps = [b - a for a, b in itertools.pairwise(window)]
    worst = max(gaps) * 1000
    up, down = (t1 - t0) * 1000, (t2 - t1) * 1000
    print(f"\nconversion up {up:.0f} ms (reconnect {step.record.get('reconnect_ms')} ms), "
          f"down {down:.0f} ms; {len(window)} datagrams in the window, "
          f"largest inter-arrival gap {worst:.1f} ms at {RATE:g}/s")
    # Forwarding went on: datagrams arrived all through both conversions.
    if worst >= STALL_MS:
        print("\n".join(ln for ln in (sb.rundir / "ovs-vswitchd.log").read_text().splitlines()
                        if "ovsdb_cs" in ln or "reconnect" in ln))
    assert len(window) >= 0.5 * (t2 - t0 + 0.1) * RATE
    if worst >= STALL_MS:  # how the serving vswitchd's database session went
        print("\n".join(ln for ln in (sb.rundir / "ovs-vswitchd.log").read_text().splitlines()
                        if "ovsdb_cs" in ln or "reconnect" in ln))
    assert worst < STALL_MS, f"traffic stopped for {worst:.0f} ms during the conversion"
