"""The "nothing lost on a live switch" rule (ovsndu.model.carried)."""

from __future__ import annotations

from ovsndu.model import CATEGORIES, Conntrack, Entry, FdbEntry, Flow, Snapshot, VswitchdInfo
from ovsndu.model.carried import CONTROL_PLANE, check_carried, ended_naturally

INFO = VswitchdInfo(pid=1, version="3.1.0")


def snap(*entries: Entry) -> Snapshot:
    cats: dict[str, list[Entry]] = {c: [] for c in CATEGORIES}
    for e in entries:
        cats[e.CATEGORY].append(e)
    return Snapshot.build(INFO, cats)


def ct(sport: int, *, timeout: int | None = 60, mark: int = 0, reply_dport: int | None = None,
       state: str | None = None) -> Conntrack:
    return Conntrack(protocol="udp", orig=f"src=10.0.0.1,dst=10.0.0.2,sport={sport},dport=53",
                     reply=f"src=10.0.0.2,dst=10.0.0.1,sport=53,dport={reply_dport or sport}",
                     mark=mark, timeout=timeout, state_orig=state,
                     state_reply=state)


def fdb(mac: str, *, port: str = "1", age: int | None = 5, static: bool = False) -> FdbEntry:
    return FdbEntry(bridge="br0", port=port, vlan=0, mac=mac, age=age, static=static)


def flow(prio: int, actions: str = "drop") -> Flow:
    return Flow(bridge="br0", table=0, cookie="0x0", priority=prio, match="ip",
                actions=actions)


def test_entries_created_by_traffic_are_expected() -> None:
    want = snap(ct(1000), fdb("00:00:00:00:00:01"))
    got = snap(ct(1000), ct(1001), ct(1002), fdb("00:00:00:00:00:01"), fdb("00:00:00:00:00:02"))
    assert check_carried(want, got) == []


def test_a_lost_conntrack_entry_fails() -> None:
    want = snap(ct(1000), ct(1001))
    got = snap(ct(1001), ct(1002))
    (lost,) = check_carried(want, got, elapsed=1.0)
    assert lost.category == "conntrack"
    assert [e.identity() for e in lost.missing] == [ct(1000).identity()]
    assert "1 missing" in lost.describe()


def test_an_entry_that_expired_meanwhile_is_excused() -> None:
    want = snap(ct(1000, timeout=3), ct(1001, timeout=50))
    got = snap(ct(1001, timeout=49))
    assert check_carried(want, got, elapsed=2.0) == []
    # ... but not one that had time left.
    assert check_carried(snap(ct(1000, timeout=30)), snap(), elapsed=2.0) != []
    # An entry without a known timeout never counts as expired.
    assert not ended_naturally(ct(1000, timeout=None), 1000.0)


def test_fdb_ageing_uses_the_bridge_aging_time() -> None:
    old = fdb("00:00:00:00:00:01", age=290)
    assert ended_naturally(old, 10.0)
    assert not ended_naturally(old, 10.0, {"br0": 3600})
    assert not ended_naturally(fdb("00:00:00:00:00:01", age=290, static=True), 1e6)
    assert check_carried(snap(old), snap(), elapsed=10.0) == []
    assert check_carried(snap(fdb("00:00:00:00:00:03", age=1)), snap(), elapsed=10.0) != []


def test_traffic_may_move_entries_on_but_not_rewrite_them() -> None:
    # A mark set by the pipeline, a TCP state moving on, a MAC seen on another port: fine.
    assert check_carried(snap(ct(1000)), snap(ct(1000, mark=7))) == []
    assert check_carried(snap(fdb("00:00:00:00:00:01")),
                         snap(fdb("00:00:00:00:00:01", port="2"))) == []
    # A different reply tuple (NAT) is not something traffic does to an entry.
    (bad,) = check_carried(snap(ct(1000)), snap(ct(1000, reply_dport=4000)))
    assert bad.changed and not bad.missing
    # Nor does it make a learned MAC static.
    assert check_carried(snap(fdb("00:00:00:00:00:01")),
                         snap(fdb("00:00:00:00:00:01", static=True))) != []


def test_the_control_plane_must_be_equal() -> None:
    want = snap(flow(10), flow(20))
    assert check_carried(want, snap(flow(10), flow(20))) == []
    (extra,) = check_carried(want, snap(flow(10), flow(20), flow(30)))
    assert extra.category == "flows" and len(extra.extra) == 1
    (changed,) = check_carried(want, snap(flow(10), flow(20, "output:1")))
    assert len(changed.changed) == 1
    (missing,) = check_carried(want, snap(flow(10)), elapsed=1e6)
    assert len(missing.missing) == 1


def test_categories_limit_what_is_compared() -> None:
    want = snap(flow(10), ct(1000))
    got = snap()
    assert [s.category for s in check_carried(want, got)] == ["flows", "conntrack"]
    assert [s.category for s in check_carried(want, got, categories=CONTROL_PLANE)] == ["flows"]
