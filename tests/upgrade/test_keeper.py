"""The supervisor's state keeper against a real vswitchd holding conntrack: conntrack and
FDB are read again only when their budget allows (a large table); a snapshot in between
keeps the last ones read and reads everything else afresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovsndu.model import CATEGORIES, Entry, Port, Snapshot, VswitchdInfo
from ovsndu.ovs import ofdump
from ovsndu.ovs.daemon import VswitchdSpec
from ovsndu.ovs.readers import BridgeInfo
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.state_corpus import populate_conntrack
from ovsndu.upgrade.keeper import StateKeeper, main_thread_forwards


def test_traffic_reads_are_bounded(sandbox: Sandbox) -> None:
    sb = sandbox
    populate_conntrack(sb)
    keeper = StateKeeper(VswitchdSpec(sb.rundir, sb.db), refresh=60.0,
                         traffic_budget=1e-6)  # as if the table were large
    pid = sb.vswitchd_pid
    first = keeper.take(pid)
    assert first is not None and first.categories["conntrack"]
    assert keeper.traffic_reads == 1 and keeper.traffic_read_s > 0

    sb.ofctl("brc", "add-flow", "table=7,priority=1,actions=drop")
    second = keeper.take(pid)
    assert second is not None
    assert keeper.traffic_reads == 1  # not due: the last conntrack and FDB are kept
    assert second.categories["conntrack"] == first.categories["conntrack"]
    assert len(second.categories["flows"]) == len(first.categories["flows"]) + 1

    keeper.traffic_at -= keeper.traffic_read_s / keeper.traffic_budget + keeper.refresh
    third = keeper.take(pid)
    assert third is not None and keeper.traffic_reads == 2
    assert keeper.traffic_due(pid, keeper.traffic_at + 1) is False
    # brc's dummy ports are polled by the main thread: each dump held them; measured
    assert 0 < keeper.traffic_hold_s < 5


def test_traffic_interval_scales_with_the_read() -> None:
    keeper = StateKeeper(VswitchdSpec(Path("/nonexistent"), "unix:/nonexistent"), refresh=60.0)
    keeper.snapshot, keeper.pid = object(), 1  # type: ignore[assignment]
    keeper.traffic_at, keeper.traffic_read_s = 1000.0, 3.0  # a 3 s read: every 300 s
    assert not keeper.traffic_due(1, 1000.0 + 299)
    assert keeper.traffic_due(1, 1000.0 + 300)
    keeper.traffic_read_s = 0.005  # a small table: read again with every snapshot
    assert keeper.traffic_due(1, 1000.0 + 1)
    assert keeper.traffic_due(2, 1000.0)  # another process: read at once


def test_traffic_interval_scales_with_the_hold_of_forwarding() -> None:
    """A dump that holds the main thread, which polls system ports, for 250 ms (one zone
    of 100k entries) is taken at most every 2500 s (0.1 ms of silence a second), even
    though its read's time alone would allow every 150 s."""
    keeper = StateKeeper(VswitchdSpec(Path("/nonexistent"), "unix:/nonexistent"), refresh=60.0)
    keeper.snapshot, keeper.pid = object(), 1  # type: ignore[assignment]
    keeper.traffic_at, keeper.traffic_read_s = 1000.0, 1.5
    assert keeper.traffic_due(1, 1000.0 + 150)
    keeper.traffic_hold_s = 0.25
    assert keeper.traffic_every_s() == pytest.approx(2500.0)
    assert not keeper.traffic_due(1, 1000.0 + 2499) and keeper.traffic_due(1, 1000.0 + 2500)


def _ports(*spec: tuple[str, str]) -> Snapshot:
    cats: dict[str, list[Entry]] = {c: [] for c in CATEGORIES}
    cats["ports"] = [Port(bridge=b, port=f"p{i}", interface=f"p{i}", type=t, ofport=i + 1)
                     for i, (b, t) in enumerate(spec)]
    return Snapshot.build(VswitchdInfo(pid=1, version="3.1.0"), cats)


def test_which_ports_a_dump_holds() -> None:
    """System, tap and dummy ports of a userspace bridge wait on the main thread; DPDK
    ports (PMD threads) and any port of a kernel bridge do not."""
    bridges = [BridgeInfo("u", "netdev", ("OpenFlow15",)),
               BridgeInfo("k", "system", ("OpenFlow15",))]
    assert main_thread_forwards(_ports(("u", "")), bridges)
    assert main_thread_forwards(_ports(("u", "dpdk"), ("u", "tap")), bridges)
    assert not main_thread_forwards(_ports(("u", "dpdk"), ("u", "internal"), ("u", "patch"),
                                           ("k", ""), ("k", "tap")), bridges)


def test_adopts_the_upgrades_snapshot() -> None:
    """The runner's snapshot replaces the keeper's (one copy held during an upgrade, not
    two); it counts as a conntrack read, and the OpenFlow counter is read again."""
    keeper = StateKeeper(VswitchdSpec(Path("/nonexistent"), "unix:/nonexistent"))
    keeper.snapshot, keeper.pid, keeper.taken_at = object(), 1, 5.0  # type: ignore[assignment]
    keeper._baseline, keeper.traffic_read_s = "17", 3.0  # a 3 s conntrack read
    snap = object()
    keeper.adopt(2, snap, 900.0)  # type: ignore[arg-type]
    assert (keeper.snapshot, keeper.pid, keeper.taken_at) == (snap, 2, 900.0)
    assert keeper.traffic_at == 900.0 and keeper._baseline is None
    assert not keeper.traffic_due(2, 900.5) and keeper.traffic_due(2, 1200.0)


def test_adopts_the_committed_state_with_its_read_time() -> None:
    """At a commit: the new process's verified state; a fresh keeper learns from the
    upgrade's read how long a conntrack read takes (1.5 s: not again for 150 s)."""
    keeper = StateKeeper(VswitchdSpec(Path("/nonexistent"), "unix:/nonexistent"))
    snap = object()
    keeper.adopt(3, snap, 50.0, 1.5)  # type: ignore[arg-type]
    assert keeper.pid == 3 and keeper.traffic_read_s == 1.5
    assert not keeper.traffic_due(3, 50.0 + 149) and keeper.traffic_due(3, 50.0 + 150)
    keeper.adopt(3, snap, 50.0, 0.5)  # type: ignore[arg-type]
    assert keeper.traffic_read_s == 1.5  # the longest read known is kept


def test_known_rules_are_not_read_again(sandbox: Sandbox,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each snapshot's rules are the next read's known rules: unchanged, the very same
    entries come back; a bridge whose rules changed is read again; another ``ovs-ofctl``
    (a package upgrade) makes nothing known."""
    sb = sandbox
    for br in ("bk1", "bk2"):
        sb.vsctl("add-br", br, "--", "set", "bridge", br,
                 "protocols=OpenFlow10,OpenFlow13,OpenFlow15")
        sb.ofctl(br, "add-flows", "-", input_text="".join(
            f"table={i % 3},priority={i},ip,nw_src=10.0.{i}.1,actions=drop\n"
            for i in range(50)))
    keeper = StateKeeper(VswitchdSpec(sb.rundir, sb.db))
    pid = sb.vswitchd_pid
    first = keeper.take(pid)
    assert first is not None and keeper.known() is first
    second = keeper.take(pid)
    assert second is not None
    assert second.categories["flows"] is first.categories["flows"]  # not parsed again

    sb.ofctl("bk2", "add-flow", "table=5,priority=1,actions=drop")
    third = keeper.take(pid)
    assert third is not None
    assert len(third.categories["flows"]) == len(first.categories["flows"]) + 1
    assert any(f.table == 5 for f in third.categories["flows"])  # type: ignore[attr-defined]
    unchanged = [f for f in third.categories["flows"] if getattr(f, "bridge", "") == "bk1"]
    assert all(any(f is g for g in first.categories["flows"]) for f in unchanged)

    monkeypatch.setattr(ofdump, "printer_id", lambda: (0, 0, 0, 0))
    assert keeper.known() is None
