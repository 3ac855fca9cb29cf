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


def ct_text(sport: int, zone: int = 0) -> str:
    return (f"udp,orig=(src=10.0.0.1,dst=10.0.0.2,sport={sport},dport=53),reply=(src=10.0.0.2,"
            f"dst=10.0.0.1,sport=53,dport={sport}),id={sport},zone={zone},status=0,"
            f"timeout={sport % 60}")


def test_catchup_delta_from_the_raw_read_equals_the_built_one() -> None:
    """The handover's delta (catchup_delta: unsorted traffic entries against the
    snapshot's identities, no build) is exactly delta_between's of the built final read,
    down to the order of the entries that appeared (catchup.json's content)."""
    from ovsndu.model.delta import catchup_delta, traffic_added, traffic_identities
    from ovsndu.model.window import replay_window
    from ovsndu.ovs.appctl_parsers import parse_conntrack

    old = parse_conntrack("\n".join(ct_text(p, p % 3) for p in range(1, 200)))
    before = snap(flow(10), flow(20), *old)
    # The final read: conntrack in dump order (not canonical), some gone, some new (one
    # of them with an old connection's identity in another zone), timeouts moved on.
    raw = parse_conntrack("\n".join(ct_text(p, p % 3) for p in (
        *range(250, 199, -1), *range(150, 3, -2), 7, 1)) + "\n" + ct_text(6, 2))
    read = snap(flow(10), flow(20))
    for replaced, changes in (({"conntrack": raw, "fdb": [], "tlv_mappings": []}, []),
                              ({"conntrack": raw}, [])):
        settled, _counts, _unknown = replay_window(read, changes, replaced)
        final = settled.build()
        want = delta_between(before, final)
        got = catchup_delta(before, settled.categories(), digests=settled.known_digests(),
                            known=traffic_identities(before))
        assert got.to_dict() == want.to_dict()
        assert got.counts() == {"conntrack.added": 52}
        added = got.added["conntrack"]
        assert [e.orig for e in added] == [e.orig for e in want.added["conntrack"]]
        assert list(added) == sorted(added, key=lambda e: (e.identity(), e.canonical()))
        # without the precomputed identities or known digests: the same
        assert catchup_delta(before, settled.categories()).to_dict() == want.to_dict()
        # the traffic part found before the stop (the final traffic read alone, as
        # upgrade/lastread.py has it then): the same delta
        early = traffic_added(before, {"fdb": [], **replaced},
                              known=traffic_identities(before))
        assert early["conntrack"] == want.added["conntrack"]
        assert catchup_delta(before, settled.categories(), digests=settled.known_digests(),
                             traffic=early).to_dict() == want.to_dict()
    # OpenFlow categories changed in the window: diffed as before
    settled, _counts, _unknown = replay_window(read, [], {"flows": [flow(20, "output:1"),
                                                                    flow(30)],
                                                          "conntrack": raw})
    got = catchup_delta(before, settled.categories(), digests=settled.known_digests(),
                        known=traffic_identities(before))
    assert got.to_dict() == delta_between(before, settled.build()).to_dict()
    assert got.counts() == {"flows.removed": 1, "flows.added": 1, "flows.changed": 1,
                            "conntrack.added": 52}
    # nothing new: empty, and the snapshot's own categories are not rebuilt
    same = replay_window(before, [], {"conntrack": list(reversed(old))})[0]
    assert catchup_delta(before, same.categories(), digests=same.known_digests(),
                         known=traffic_identities(before)).empty


def test_replace_sorts_only_the_replaced_category() -> None:
    s = snap(flow(10), ct(1), ct(2))
    r = s.replace("conntrack", [ct(3), ct(1)])
    assert r == snap(flow(10), ct(1), ct(3))
    assert r.digests() == snap(flow(10), ct(1), ct(3)).digests()
    assert applied(s, delta_between(s, snap(flow(11), ct(1), ct(2), ct(4))),
                   ("flows",)).categories["conntrack"] == s.categories["conntrack"]
