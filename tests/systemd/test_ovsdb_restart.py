"""ovsdb-server restarts and reloads under ovsndu leave ovs-vswitchd running, with its flows.

A real systemd 252 with Debian's units and ovsndu's (install-systemd): ovs-vswitchd.service
no longer Requires=/is ReloadPropagatedFrom= ovsdb-server, so `systemctl restart
ovsdb-server`, `systemctl reload ovsdb-server` and `systemctl restart openvswitch-switch`
restart the database alone; vswitchd (same PID) reconnects and keeps every flow.
"""

from __future__ import annotations

import time

import pytest

from tests.systemd.container import Container

UNIT = "ovs-vswitchd.service"
FLOWS = "\n".join(f"priority={100 + i},ip,nw_dst=10.0.{i}.0/24,actions=drop" for i in range(50))

pytestmark = pytest.mark.systemd


def _vswitchd_pid(box: Container) -> int:
    return int(box.run("cat", "/var/run/openvswitch/ovs-vswitchd.pid").stdout)


def _flows(box: Container) -> list[str]:
    out = box.run("ovs-ofctl", "dump-flows", "br0", "--no-stats").stdout
    return sorted(out.splitlines())


def _reconnected(box: Container) -> None:
    """ovs-vsctl waits until vswitchd applied the change: it is connected again."""
    t0 = time.monotonic()
    box.run("ovs-vsctl", "--timeout=30", "set", "Bridge", "br0",
            f"external_ids:probe={time.monotonic_ns()}")
    print(f"  vswitchd caught up {time.monotonic() - t0:.2f} s after the command returned")


@pytest.fixture(name="switch", scope="module")
def _switch(box: Container) -> Container:
    box.run("systemctl", "start", "openvswitch-switch", timeout=300)
    box.run("ovs-vsctl", "--may-exist", "add-br", "br0", "--", "set", "bridge", "br0",
            "datapath_type=netdev")
    box.run("ovs-ofctl", "add-flows", "br0", "-", input_text=FLOWS + "\n")
    return box


@pytest.mark.parametrize("command", [
    ("restart", "ovsdb-server"), ("reload", "ovsdb-server"), ("restart", "openvswitch-switch")])
def test_database_restart_keeps_vswitchd(switch: Container, command: tuple[str, str]) -> None:
    box = switch
    before = box.show(UNIT, "MainPID", "ActiveState")
    pid, flows = _vswitchd_pid(box), _flows(box)
    db_pid = box.show("ovsdb-server.service", "MainPID")["MainPID"]
    assert len(flows) == 51
    box.run("systemctl", *command, timeout=300)
    db = box.show("ovsdb-server.service", "ActiveState", "MainPID")
    assert db["ActiveState"] == "active", db
    assert db["MainPID"] != db_pid, "ovsdb-server was not restarted"
    after = box.show(UNIT, "MainPID", "ActiveState")
    assert after == before, (before, after)
    assert _vswitchd_pid(box) == pid
    _reconnected(box)
    assert _flows(box) == flows
