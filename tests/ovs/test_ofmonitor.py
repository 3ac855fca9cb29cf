"""Following a bridge with a flow monitor and forwarded group/meter mods (ovs/ofmonitor.py)
against a real Open vSwitch: what arrives, decoded, and a pause when nobody drains."""

from __future__ import annotations

import os
import signal
import time

from ovsndu.model import Flow, Group, Meter
from ovsndu.ovs import ofmeters
from ovsndu.ovs.ofmonitor import MAX_BACKLOG, BridgeMonitor, follow, wait_stopped
from ovsndu.ovs.parsers import parse_meters
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.upgrade.lastread import LastRead


def _bridge(sandbox: Sandbox) -> str:
    sandbox.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=dummy")
    return f"unix:{sandbox.mgmt_path('br0')}"


def _drain_while_stopped(sandbox: Sandbox, monitor: BridgeMonitor) -> None:
    """Stop the sandbox's vswitchd, drain *monitor*, continue it."""
    pid = sandbox.vswitchd_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_stopped(pid)
        monitor.drain()
    finally:
        os.kill(pid, signal.SIGCONT)


def test_changes_of_other_connections_arrive_in_order(sandbox: Sandbox) -> None:
    mgmt = _bridge(sandbox)
    monitor = follow(sandbox.mgmt_path("br0").parent, ["br0"])["br0"]

    def of(*args: str, version: str = "OpenFlow13") -> None:
        sandbox.run(["ovs-ofctl", "-O", version, args[0], mgmt, *args[1:]])

    try:
        of("add-flow", "table=3,priority=5,idle_timeout=50,udp,tp_dst=7,actions=drop")
        of("mod-flows", "table=3,udp,tp_dst=7,actions=output:1")
        of("add-group", "group_id=5,type=all,bucket=actions=load:5->OXM_OF_MPLS_LABEL[0..19]")
        of("mod-group", "group_id=5,type=select,bucket=actions=drop")
        of("add-meter", "meter=5,kbps,burst,bands=type=drop,rate=100,burst_size=10")
        of("add-flow", "table=5,priority=4,mpls,actions=load:4->OXM_OF_MPLS_LABEL[0..19]",
           version="OpenFlow10")
        of("del-flows", "table=3,udp,tp_dst=7")
        of("del-meter", "meter=5")
        of("del-groups")
        _drain_while_stopped(sandbox, monitor)
        assert monitor.complete
        got = [(c.category, c.op, c.entry) for c in monitor.changes()]
    finally:
        monitor.close()
    kinds = [(cat, op) for cat, op, _e in got]
    assert kinds == [("flows", "put"), ("flows", "put"), ("groups", "put"), ("groups", "put"),
                     ("meters", "put"), ("flows", "put"), ("flows", "delete"),
                     ("meters", "delete"), ("groups", "clear")]
    first, modified, g_add, g_mod, m_add, mpls = (e for _c, _o, e in got[:6])
    assert isinstance(first, Flow) and (first.table, first.priority, first.match,
                                        first.actions, first.idle_timeout) == (
        3, 5, "udp,tp_dst=7", "drop", 50)
    assert isinstance(modified, Flow) and modified.actions == "output:1" and modified.wire
    assert isinstance(g_add, Group) and g_add.buckets == (
        "bucket_id:0,actions=set_field:5/0xfffff->mpls_label",) and g_add.wire
    assert isinstance(g_mod, Group) and g_mod.type == "select"
    assert isinstance(m_add, Meter) and (m_add.flags, m_add.bands) == (
        ("kbps", "burst"), ("type=drop rate=100 burst_size=10",))
    assert isinstance(mpls, Flow) and mpls.actions == "set_field:4/0xfffff->mpls_label"


def test_an_undrained_monitor_is_paused_and_not_complete(sandbox: Sandbox) -> None:
    """Nobody reads: the switch queues updates, pauses the monitor past 128 KiB and says
    so; the monitor is then not complete (the handover reads again instead)."""
    _bridge(sandbox)
    monitor = BridgeMonitor(sandbox.mgmt_path("br0"), "br0")
    try:
        monitor._halt()  # the reader thread stops: nothing drains the socket
        flows = "".join(f"table=1,priority=1,udp,tp_dst={n},actions=output:{n % 60 + 1}\n"
                        for n in range(1, 20001))
        for _ in range(3):  # adds, then modifications of all of them
            sandbox.ofctl("br0", "add-flows", "-", input_text=flows)
            flows = flows.replace("actions=output:", "actions=output:1")
        for _ in range(100):  # what the switch queued comes once the socket is read
            monitor.drain()
            if monitor.paused:
                break
            time.sleep(0.05)
        assert monitor.paused and not monitor.complete
    finally:
        monitor.close()


def test_catchup_meters_encoded_here_install_the_same_meters(sandbox: Sandbox) -> None:
    """Meters as dump-meters reads them, encoded by ofmeters.encode and sent to another
    bridge, dump the same there; reserved ids: None (they go by ovs-ofctl)."""
    _bridge(sandbox)
    sandbox.vsctl("add-br", "br1", "--", "set", "bridge", "br1", "datapath_type=dummy")
    for spec in ("meter=1,kbps,bands=type=drop,rate=100",
                 "meter=2,pktps,burst,stats,bands=type=drop,rate=5,burst_size=7",
                 "meter=3,kbps,burst,bands=type=drop,rate=50,burst_size=3,"
                 "type=drop,rate=80,burst_size=4"):
        sandbox.ofctl("br0", "add-meter", spec, version="OpenFlow13")
    before = sandbox.ofctl("br0", "dump-meters", version="OpenFlow13")
    meters = parse_meters("br0", before)
    msgs = [ofmeters.encode(m, 0, i + 1) for i, m in enumerate(meters)]
    assert len(meters) == 3 and all(msgs)
    ofmeters.send(sandbox.mgmt_path("br1"), [m for m in msgs if m], [m.spec() for m in meters])
    after = sandbox.ofctl("br1", "dump-meters", version="OpenFlow13")
    assert after.splitlines()[1:] == before.splitlines()[1:]
    assert ofmeters.encode(Meter(bridge="br0", meter_id=0xFFFFFFFD, flags=("kbps",),
                                 bands=("type=drop rate=1",)), 0, 1) is None


def test_a_backlog_at_the_stop_makes_a_monitor_incomplete(sandbox: Sandbox) -> None:
    """Nobody reads while 1,000 rules are added (72 KiB of events: no pause yet, but the
    socket is full and the rest waits in the switch); at the stop the monitor says it
    may have missed changes."""
    _bridge(sandbox)
    monitor = BridgeMonitor(sandbox.mgmt_path("br0"), "br0")
    try:
        monitor._halt()
        sandbox.ofctl("br0", "add-flows", "-", input_text="".join(
            f"table=1,priority=1,udp,tp_dst={n},actions=output:1\n" for n in range(1, 1001)))
        _drain_while_stopped(sandbox, monitor)
        assert not monitor.paused and not monitor.error
        assert monitor.backlog > MAX_BACKLOG and not monitor.complete
    finally:
        monitor.close()


def test_release_continues_the_stopped_process_and_closes_the_monitors(
        sandbox: Sandbox) -> None:
    """What a rollback before the kill does (upgrade/lastread.py): SIGCONT, monitors closed."""
    _bridge(sandbox)
    pid = sandbox.vswitchd_pid
    last = LastRead(pid, monitors=follow(sandbox.mgmt_path("br0").parent, ["br0"]))
    os.kill(pid, signal.SIGSTOP)
    last.stopped = True
    assert wait_stopped(pid)
    last.release()
    assert not last.stopped
    assert "actions=NORMAL" in sandbox.ofctl("br0", "dump-flows")  # it answers again
    assert last.monitors["br0"]._sock.fileno() == -1  # closed


def test_a_partial_group_change_makes_a_monitor_incomplete(sandbox: Sandbox) -> None:
    """An OpenFlow 1.5 insert_bucket is forwarded with the new bucket only: the monitor
    cannot know the group's content, so the catch-up reads it again."""
    mgmt = _bridge(sandbox)
    sandbox.ofctl("br0", "add-group", "group_id=5,type=all,bucket=bucket_id:1,actions=drop",
                  version="OpenFlow15")
    monitor = BridgeMonitor(sandbox.mgmt_path("br0"), "br0")
    try:
        sandbox.run(["ovs-ofctl", "-O", "OpenFlow15", "insert-buckets", mgmt,
                     "group_id=5,command_bucket_id=last,bucket=bucket_id:2,actions=drop"])
        for _ in range(100):
            monitor.drain()
            if monitor.messages:
                break
            time.sleep(0.01)
        assert monitor.partial and not monitor.complete
        assert [c.op for c in monitor.changes()] == ["unknown"]
    finally:
        monitor.close()
