"""The final catch-up's content (ovsndu.model.delta) and its bundle lines."""

from __future__ import annotations

import json

from ovsndu.model import CATEGORIES, Conntrack, Entry, Flow, Group, Snapshot, VswitchdInfo
from ovsndu.model.delta import Delta, applied, delta_between
from ovsndu.ovs.catchup import bundle_lines

INFO = VswitchdInfo(pid=1, version="3.1.0")


def snap(*entries: Entry) -> Snapshot:
    cats: dict[str, list[Entry]] = {c: [] for c in CATEGORIES}
    for e in entries:
        cats[e.CATEGORY].append(e)
    return Snapshot.build(INFO, cats)


def flow(prio: int, actions: str = "drop", n_packets: int = 0) -> Flow:
    return Flow(bridge="br0", table=0, cookie="0x0", priority=prio, match="ip",
                actions=actions, n_packets=n_packets)


def ct(sport: int) -> Conntrack:
    return Conntrack(protocol="udp", orig=f"src=10.0.0.1,dst=10.0.0.2,sport={sport},dport=53",
                     reply=f"src=10.0.0.2,dst=10.0.0.1,sport=53,dport={sport}", timeout=30)


def test_openflow_changes_and_new_traffic_state() -> None:
    group = Group(bridge="br0", group_id=7, type="all", buckets=("actions=drop",))
    before = snap(flow(10), flow(20), flow(30), ct(1), ct(2))
    after = snap(flow(10, n_packets=99), flow(20, "output:1"), flow(40), group,
                 ct(2), ct(3))
    d = delta_between(before, after)
    assert [f.priority for f in d.removed["flows"]] == [30]  # type: ignore[attr-defined]
    assert [f.priority for f in d.added["flows"]] == [40]  # type: ignore[attr-defined]
    assert [f.priority for f in d.changed["flows"]] == [20]  # counters are no change
    assert d.added["groups"] == (group,)
    assert d.added["conntrack"] == (ct(3),)  # an ended entry is not "removed"
    assert d.counts() == {"flows.removed": 1, "flows.added": 1, "flows.changed": 1,
                          "groups.added": 1, "conntrack.added": 1}
    lines = bundle_lines(d, "br0")
    assert lines == ["flow delete_strict table=0,priority=30,ip",
                     f"group add {group.spec()}",
                     f"flow add {flow(40).spec()}",
                     f"flow add {flow(20, 'output:1').spec()}"]
    assert bundle_lines(d, "br1") == []


def test_nothing_changed_is_empty_and_round_trips() -> None:
    s = snap(flow(10), ct(1))
    assert delta_between(s, s).empty
    d = delta_between(s, snap(flow(10), flow(11), ct(1), ct(5)))
    again = Delta.from_dict(json.loads(json.dumps(d.to_dict())))
    assert again.counts() == d.counts() and again.added["flows"] == d.added["flows"]


def test_applied_gives_what_the_new_process_should_hold() -> None:
    before = snap(flow(10), flow(20), flow(30), ct(1))
    after = snap(flow(10), flow(20, "output:1"), flow(40), ct(1), ct(2))
    d = delta_between(before, after)
    result = applied(before, d)
    for category in ("flows", "conntrack"):
        assert result.digest(category) == after.digest(category), category
    assert applied(before, delta_between(before, before)) == before
