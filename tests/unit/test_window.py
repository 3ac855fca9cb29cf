"""Changes seen after the final read, replayed on it (model/window.py), and their wire forms
(ovs/ofmonwire.py)."""

from __future__ import annotations

import struct

import pytest

from ovsndu.errors import ParseError
from ovsndu.model import Flow, Group, Meter
from ovsndu.model.window import Change, apply_window
from ovsndu.ovs import ofmonwire
from tests.unit.test_delta import snap


def flow(prio: int, actions: str = "drop", flags: tuple[str, ...] = ()) -> Flow:
    return Flow(bridge="br0", table=0, cookie="0x0", priority=prio, match="ip",
                actions=actions, flags=flags)


def meter(mid: int, rate: int, bridge: str = "br0") -> Meter:
    return Meter(bridge=bridge, meter_id=mid, flags=("kbps",), bands=(f"type=drop rate={rate}",))


def test_replay_in_order_on_the_read() -> None:
    read = snap(flow(1, flags=("send_flow_rem",)), flow(2, flags=("send_flow_rem",)), flow(3),
                meter(1, 10), meter(2, 20), meter(3, 30, "br1"))
    changes = [
        Change("flows", "put", "br0", flow(1)),               # before the read: same content
        Change("flows", "put", "br0", flow(2, "output:1")),   # modified after the read
        Change("flows", "delete", "br0", flow(3)),
        Change("flows", "put", "br0", flow(4)),               # added, then removed, then again
        Change("flows", "delete", "br0", flow(4)),
        Change("flows", "put", "br0", flow(4, "output:2")),
        Change("meters", "clear", "br0"),                      # delete all: br0 only
        Change("meters", "put", "br0", meter(5, 50)),
    ]
    out, counts, unknown = apply_window(read, changes)
    flows = {f.priority: f for f in out.categories["flows"] if isinstance(f, Flow)}
    assert flows[1].flags == ("send_flow_rem",)                   # the read's version kept
    assert (flows[2].actions, flows[2].flags) == ("output:1", ("send_flow_rem",))
    assert 3 not in flows
    assert (flows[4].actions, flows[4].flags) == ("output:2", ())  # added in the window
    assert sorted((m.bridge, m.meter_id) for m in out.categories["meters"]
                  if isinstance(m, Meter)) == [("br0", 5), ("br1", 3)]
    assert counts == {"flows.put": 4, "flows.delete": 2, "meters.clear": 1, "meters.put": 1}
    assert unknown == []


def test_unknown_changes_are_named_and_the_read_kept() -> None:
    g = Group(bridge="br0", group_id=7, type="all", buckets=("actions=drop",))
    out, _counts, unknown = apply_window(snap(g), [
        Change("groups", "unknown", "br0", what="insert_bucket of id 7")])
    assert out.categories["groups"] == (g,)
    assert unknown == ["groups on br0: insert_bucket of id 7"]
    with pytest.raises(ValueError, match="conntrack"):
        apply_window(snap(), [Change("conntrack", "put", "br0", flow(1))])


def _update(event: int, table: int = 3, priority: int = 100) -> bytes:
    match = struct.pack("!HH4x", 1, 4)
    instructions = struct.pack("!HH4x", 4, 8)
    body = struct.pack("!HHBBHHH4xQ", 24 + len(match) + len(instructions), event, table, 0,
                       10, 0, priority, 0xABC) + match + instructions
    head = struct.pack("!BBHI", 6, 19, 16 + len(body), 0) + struct.pack("!HH4x", 16, 0)
    return head + body


def test_flow_updates_become_flow_desc_entries() -> None:
    (u,) = ofmonwire.flow_updates(_update(1))
    assert u.event == "added"
    length, table, priority, idle, _hard, flags, _imp, cookie = struct.unpack_from(
        "!H2xBxHHHHHQ", u.entry)
    assert (length, table, priority, idle, flags, cookie) == (len(u.entry), 3, 100, 10, 0,
                                                             0xABC)
    paused = struct.pack("!BBHI", 6, 19, 24, 0) + struct.pack("!HH4x", 16, 0) + \
        struct.pack("!HH4x", 8, 5)
    assert [x.event for x in ofmonwire.flow_updates(paused)] == ["paused"]
    with pytest.raises(ParseError, match="unknown event"):
        list(ofmonwire.flow_updates(_update(9)))


def test_forwarded_group_and_meter_mods() -> None:
    bucket = struct.pack("!HHI", 16, 8, 0) + struct.pack("!HH4x", 0, 0)  # no actions
    gmod = struct.pack("!HBxIH2xI", 1, 0, 42, len(bucket), 0xFFFFFFFF) + bucket
    inner = struct.pack("!BBHI", 6, 15, 8 + len(gmod), 5) + gmod
    fwd = struct.pack("!BBHI", 6, 32, 8 + len(inner), 5) + inner
    f = ofmonwire.forwarded(fwd)
    assert (f.category, f.command, f.ident) == ("groups", "modify", 42)
    assert struct.unpack_from("!HBxIH", f.entry) == (len(f.entry), 0, 42, len(bucket))
    mmod = struct.pack("!HHI", 2, 1, 0xFFFFFFFF)
    inner = struct.pack("!BBHI", 6, 29, 8 + len(mmod), 6) + mmod
    f = ofmonwire.forwarded(struct.pack("!BBHI", 6, 32, 8 + len(inner), 6) + inner)
    assert (f.category, f.command, f.ident, f.entry) == ("meters", "delete", 0xFFFFFFFF, b"")
    inner = struct.pack("!BBHI", 6, 14, 8, 7)
    with pytest.raises(ParseError, match="unexpected forwarded"):
        ofmonwire.forwarded(struct.pack("!BBHI", 6, 32, 16, 7) + inner)


def test_categories_read_later_replace_the_reads_before_the_replay() -> None:
    read = snap(flow(1), meter(1, 10))
    out, _counts, _unknown = apply_window(
        read, [Change("meters", "put", "br0", meter(2, 20))],
        {"meters": [meter(3, 30)], "flows": []})
    assert out.categories["flows"] == ()
    assert sorted(m.meter_id for m in out.categories["meters"]  # type: ignore[attr-defined]
                  ) == [2, 3]
    assert apply_window(read, [])[0] is read


def test_meter_mod_layout() -> None:
    """OpenFlow 1.3 §7.3.4.4: command, flags, id, then 16-byte bands (dscp_remark: prec)."""
    from ovsndu.ovs import ofmeters
    m = Meter(bridge="br0", meter_id=9, flags=("pktps", "burst"),
              bands=("type=dscp_remark rate=10 burst_size=2 prec_level=1",
                     "type=drop rate=20"))
    msg = ofmeters.encode(m, 1, 5)
    assert msg is not None
    assert struct.unpack("!BBHIHHI", msg[:16]) == (4, 29, 48, 5, 1, 2 | 4, 9)
    assert struct.unpack("!HHIIB3x", msg[16:32]) == (2, 16, 10, 2, 1)
    assert struct.unpack("!HHIIB3x", msg[32:48]) == (1, 16, 20, 0, 0)
    assert ofmeters.encode(Meter(bridge="br0", meter_id=9, flags=("kbps",),
                                 bands=("type=experimenter rate=1",)), 0, 1) is None
