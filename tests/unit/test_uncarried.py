"""What cannot be carried: found by name, counted, and left out of exactly the read-back."""

from __future__ import annotations

import pytest

from ovsndu.errors import RestoreError
from ovsndu.model import CATEGORIES, Conntrack, FdbEntry, Port, Snapshot, VswitchdInfo
from ovsndu.ovs.appctl_parsers import derive_nat
from ovsndu.ovs.uncarried import carried_only, counts, find_uncarried, refuse_if_any


def _ct(orig: str, reply: str, **kw: object) -> Conntrack:
    return Conntrack(protocol="udp", orig=orig, reply=reply, nat=derive_nat(orig, reply),
                     timeout=20, **kw)  # type: ignore[arg-type]


PLAIN = _ct("src=10.0.0.1,dst=10.0.0.2,sport=1,dport=2",
            "src=10.0.0.2,dst=10.0.0.1,sport=2,dport=1")
# SNAT and DNAT at once: no single ct(nat) recreates it.
BOTH = _ct("src=10.0.0.1,dst=10.0.0.2,sport=1,dport=2",
           "src=10.9.0.2,dst=10.8.0.1,sport=2,dport=1", zone=3)


def _snap(*entries: Conntrack) -> Snapshot:
    cats: dict[str, list[object]] = {name: [] for name in CATEGORIES}
    cats["conntrack"] = list(entries)
    return Snapshot.build(VswitchdInfo(pid=1, version="3.1"), cats)  # type: ignore[arg-type]


def test_found_by_name_and_counted() -> None:
    """The entry with both NATs is uncarried; the plain one is not."""
    found = find_uncarried(_snap(PLAIN, BOTH))
    assert [u.entry for u in found] == [BOTH]
    assert counts(found) == {"conntrack": 1}
    assert "10.0.0.1" in found[0].line() and found[0].line().startswith("uncarried conntrack: ")


def test_carried_only_removes_exactly_those() -> None:
    """The read-back target keeps every other entry, including one differing only in zone."""
    twin = _ct(BOTH.orig, BOTH.reply, zone=4)
    snap = _snap(PLAIN, BOTH, twin)
    kept = carried_only(snap).categories["conntrack"]
    assert set(kept) == {PLAIN}  # twin is uncarried too (same reason), BOTH removed
    only_both = carried_only(snap, [u for u in find_uncarried(snap) if u.entry == BOTH])
    assert set(only_both.categories["conntrack"]) == {PLAIN, twin}


def test_kernel_conntrack_is_never_uncarried() -> None:
    """On the kernel datapath conntrack is not replayed, so nothing of it is left out."""
    assert find_uncarried(_snap(BOTH), replay_conntrack=False) == ()


def test_refuse_mode() -> None:
    """"refuse" raises naming the entry; "report" does not; other modes are a bug."""
    found = find_uncarried(_snap(BOTH))
    refuse_if_any(found, "report")
    refuse_if_any((), "refuse")
    with pytest.raises(RestoreError, match=r"1 entries cannot be carried.*10\.0\.0\.1"):
        refuse_if_any(found, "refuse")
    with pytest.raises(ValueError, match="ignore"):
        refuse_if_any(found, "ignore")


def test_dynamic_fdb_on_a_mirror_output_port() -> None:
    """Defect 8: a dynamic MAC on a mirror's output port cannot be learned again; a static
    one there, and a dynamic one elsewhere, are carried."""
    ports = [Port(bridge="br0", port="p2", interface="p2", type="dummy", ofport=2,
                  mirror_output=True),
             Port(bridge="br0", port="p1", interface="p1", type="dummy", ofport=1)]
    mac = "50:54:00:00:00:{:02x}"
    fdb = [FdbEntry(bridge="br0", port="2", vlan=0, mac=mac.format(1), age=3),
           FdbEntry(bridge="br0", port="2", vlan=0, mac=mac.format(2), static=True),
           FdbEntry(bridge="br0", port="1", vlan=0, mac=mac.format(3), age=3)]
    cats: dict[str, list[object]] = {name: [] for name in CATEGORIES}
    cats["ports"], cats["fdb"] = ports, fdb  # type: ignore[assignment]
    snap = Snapshot.build(VswitchdInfo(pid=1, version="3.1"), cats)  # type: ignore[arg-type]
    found = find_uncarried(snap)
    assert [u.entry for u in found] == [fdb[0]]
    assert "mirror's output port" in found[0].reason
    assert set(carried_only(snap).categories["fdb"]) == {fdb[1], fdb[2]}


def test_related_entries_need_their_parent() -> None:
    """A related entry is replayed after its helper parent (whose FTP command announces it);
    without the parent it is uncarried, named as such."""
    from ovsndu.ovs.replay import conntrack_lines

    parent = Conntrack(protocol="tcp", orig="src=10.0.0.1,dst=10.0.0.2,sport=4000,dport=21",
                       reply="src=10.0.0.2,dst=10.0.0.1,sport=21,dport=4000",
                       state_orig="ESTABLISHED", state_reply="ESTABLISHED", helper="ftp", zone=5)
    child = Conntrack(protocol="tcp", orig="src=10.0.0.2,dst=10.0.0.1,sport=20,dport=4001",
                      reply="src=10.0.0.1,dst=10.0.0.2,sport=4001,dport=20",
                      state_orig="SYN_SENT", state_reply="CLOSED", zone=5, parent=parent.orig)
    lines = conntrack_lines([child, parent])
    port_cmd = b"PORT 10,0,0,1,15,161\r\n".hex()  # 10.0.0.1 port 4001
    assert len(lines) == 5  # handshake, the PORT command, the last ack; the child's SYN
    assert port_cmd in lines[3]
    assert all("alg=ftp" in line for line in lines[:4]) and "alg=" not in lines[4]
    assert find_uncarried(_snap(parent, child)) == ()
    (orphan,) = find_uncarried(_snap(child))
    assert "related connection" in orphan.reason


def test_carriable_checks_only_the_given_entries() -> None:
    """The catch-up's filter: of the entries it adds, the uncarried ones are set apart."""
    from ovsndu.ovs.uncarried import carriable

    snap = _snap(PLAIN, BOTH)
    keep, dropped = carriable(snap, "conntrack", [BOTH, PLAIN])
    assert keep == [PLAIN]
    assert [u.entry for u in dropped] == [BOTH]
    assert carriable(snap, "routes", ["anything"]) == (["anything"], ())  # type: ignore[list-item]


def test_deferred_batches_keep_children_after_parents() -> None:
    """Split into a first and a deferred batch, a related entry never goes before its
    parent, and the parent's FTP command is sent though its child is in the other batch."""
    from ovsndu.ovs.replay import conntrack_lines, with_parents_first

    parent = Conntrack(protocol="tcp", orig="src=10.0.0.1,dst=10.0.0.2,sport=4000,dport=21",
                       reply="src=10.0.0.2,dst=10.0.0.1,sport=21,dport=4000",
                       state_orig="ESTABLISHED", state_reply="ESTABLISHED", helper="ftp", zone=5)
    child = Conntrack(protocol="tcp", orig="src=10.0.0.2,dst=10.0.0.1,sport=20,dport=4001",
                      reply="src=10.0.0.1,dst=10.0.0.2,sport=4001,dport=20",
                      state_orig="SYN_SENT", state_reply="CLOSED", zone=5, parent=parent.orig)
    first, later = with_parents_first([child, PLAIN], [parent])
    assert (first, later) == ([PLAIN], [parent, child])
    first, later = with_parents_first([parent], [child])
    lines = conntrack_lines(first, related_to=[parent, child])
    assert any(b"PORT 10,0,0,1,15,161\r\n".hex() in line for line in lines)


def test_the_last_snapshots_answer_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked again about the same snapshot (the verification, then the record), the
    answer is not computed again; another snapshot, or the other mode, is."""
    from ovsndu.ovs import uncarried

    snap, calls = _snap(PLAIN, BOTH), []
    checks = dict(uncarried.CHECKS)

    def counting(s: Snapshot):  # type: ignore[no-untyped-def]
        calls.append(s)
        return checks["conntrack"](s)

    monkeypatch.setitem(uncarried.CHECKS, "conntrack", counting)
    first = find_uncarried(snap)
    assert find_uncarried(snap) is first and len(calls) == 1
    assert find_uncarried(snap, replay_conntrack=False) == ()
    assert find_uncarried(snap) == first and len(calls) == 2
    other = _snap(PLAIN, BOTH)
    assert find_uncarried(other) == first and len(calls) == 3
