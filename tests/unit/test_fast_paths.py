"""The cheaper ways of the 200k case decide exactly as the full ways they short-cut.

* a diff given both digests (equal digests: nothing to match) and ordering only the
  differing identities gives what matching every identity gave;
* a category given to ``Snapshot.build`` as a known snapshot's own tuple keeps its order
  and digest, and is the same as sorting it again;
* ``replay_reason`` (no frames made) refuses exactly what ``conntrack_packets`` refuses;
* addresses packed by the C parser are ``ipaddress``'s bytes, bad ones still refused;
* the traffic categories checked by identity (no encodings) fail exactly as the diff did.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsndu.errors import RestoreError
from ovsndu.model import CATEGORIES, Conntrack, Entry, FdbEntry, Snapshot, VswitchdInfo
from ovsndu.model.carried import Shortfall, _traffic_may_change, check_category, ended_naturally
from ovsndu.model.diff import CategoryDiff, diff_category
from ovsndu.model.snapshot import category_digest
from ovsndu.ovs.appctl_parsers import _derived_nat, derive_nat
from ovsndu.ovs.packets import _packed, frame
from ovsndu.ovs.replay import CannotReplay, conntrack_packets, replay_reason
from tests.unit.test_model import ENTRIES, INFO


def _reference_diff(category: str, a: tuple[Entry, ...], b: tuple[Entry, ...]) -> CategoryDiff:
    """The diff as it was: every identity matched, in repr order."""
    def by_identity(entries: tuple[Entry, ...]) -> defaultdict[object, dict[bytes, Entry]]:
        out: defaultdict[object, dict[bytes, Entry]] = defaultdict(dict)
        for e in entries:
            out[e.identity()][e.canonical()] = e
        return out

    left, right = by_identity(a), by_identity(b)
    removed: list[Entry] = []
    added: list[Entry] = []
    changed: list[tuple[Entry, Entry]] = []
    for key in sorted(left.keys() | right.keys(), key=repr):
        gone = [left[key][c] for c in sorted(left[key].keys() - right[key].keys())]
        new = [right[key][c] for c in sorted(right[key].keys() - left[key].keys())]
        pairs = min(len(gone), len(new))
        changed += zip(gone[:pairs], new[:pairs], strict=True)
        removed += gone[pairs:]
        added += new[pairs:]
    return CategoryDiff(category, category_digest(a), category_digest(b),
                        tuple(removed), tuple(added), tuple(changed))


@settings(max_examples=200)
@given(st.data())
def test_diff_is_the_reference_diff(data: st.DataObject) -> None:
    category = data.draw(st.sampled_from(CATEGORIES))
    pool = data.draw(st.lists(ENTRIES[category], min_size=1, max_size=6))
    a = tuple(data.draw(st.lists(st.sampled_from(pool), max_size=6)))
    b = tuple(data.draw(st.lists(st.sampled_from(pool), max_size=6)))
    want = _reference_diff(category, a, b)
    assert diff_category(category, a, b) == want
    digests = (category_digest(a), category_digest(b))
    assert diff_category(category, a, b, digests=digests) == want


def test_equal_digests_are_trusted() -> None:
    """Given equal digests nothing is matched (they are the canonical encodings' digest)."""
    a = (Conntrack(protocol="udp", orig="src=1", reply="src=2"),)
    assert diff_category("conntrack", a, (), digests=("x", "x")).removed == ()
    assert diff_category("conntrack", a, (), digests=("x", "y")).removed == a


@given(st.fixed_dictionaries({name: st.lists(ENTRIES[name], max_size=4)
                              for name in CATEGORIES}))
def test_build_keeps_a_known_category(cats: dict[str, list[Entry]]) -> None:
    known = Snapshot.build(INFO, cats)
    again = {name: list(reversed(known.categories[name])) for name in CATEGORIES}
    again["flows"] = known.categories["flows"]  # type: ignore[assignment]
    built = Snapshot.build(VswitchdInfo(pid=2, version="x"), again, known=known)
    assert built.categories["flows"] is known.categories["flows"]
    assert built.digests() == known.digests()
    assert built.categories == Snapshot.build(INFO, again).categories


def _tcp(state: tuple[str, str], flags: tuple[str, str] = ("", ""), **kw: object) -> Conntrack:
    return Conntrack(protocol="tcp", orig="src=10.0.0.1,dst=10.0.0.2,sport=1000,dport=80",
                     reply="src=10.0.0.2,dst=10.0.0.1,sport=80,dport=1000",
                     state_orig=state[0], state_reply=state[1], tcp_flags_orig=flags[0],
                     tcp_flags_reply=flags[1], timeout=100, **kw)  # type: ignore[arg-type]


CASES = [
    _tcp(("ESTABLISHED", "ESTABLISHED")),
    _tcp(("TIME_WAIT", "TIME_WAIT")),
    _tcp(("LISTEN", "LISTEN")),                              # no sequence reaches it
    _tcp(("ESTABLISHED", "ESTABLISHED"), ("WINDOW_SCALE|SACK_PERM", "")),
    _tcp(("ESTABLISHED", "ESTABLISHED"), ("WINDOW_SCALE", "WINDOW_SCALE"),
         wscale_orig=7, wscale_reply=2),
    _tcp(("ESTABLISHED", "ESTABLISHED"), helper="irc"),     # no ALG
    _tcp(("SYN_SENT", "CLOSED"), helper="ftp"),
    Conntrack(protocol="udp", orig="src=10.0.0.1,dst=10.0.0.2,sport=1,dport=2",
              reply="src=10.9.0.2,dst=10.8.0.1,sport=2,dport=1",
              nat="snat=10.9.0.2,dnat=10.8.0.1", timeout=20),  # both NATs
    Conntrack(protocol="icmp", orig="src=10.0.0.1,dst=10.0.0.2,id=3,type=8,code=0",
              reply="src=10.0.0.2,dst=10.0.0.1,id=3,type=0,code=0", timeout=10),
    Conntrack(protocol="icmpv6", orig="src=fe80::1,dst=fe80::2,id=3,type=128,code=0",
              reply="src=fe80::2,dst=fe80::1,id=3,type=129,code=0", timeout=10),
]


@pytest.mark.parametrize("entry", CASES, ids=lambda e: f"{e.protocol}-{e.state}-{e.helper}")
def test_replay_reason_is_what_the_replay_refuses(entry: Conntrack) -> None:
    reason = replay_reason(entry)
    if reason is None:
        assert conntrack_packets(entry)
    else:
        with pytest.raises(CannotReplay) as refused:
            conntrack_packets(entry)
        assert refused.value.reason == reason


def test_the_cases_cover_both_answers() -> None:
    reasons = [replay_reason(e) for e in CASES]
    assert sum(r is None for r in reasons) >= 4 and sum(r is not None for r in reasons) >= 4


def test_unknown_protocol_is_an_error_not_a_reason() -> None:
    bad = Conntrack(protocol="bogus", orig="src=1.1.1.1,dst=2.2.2.2",
                    reply="src=2.2.2.2,dst=1.1.1.1")
    with pytest.raises(RestoreError, match="unknown protocol"):
        replay_reason(bad)


@pytest.mark.parametrize("text", ["10.0.0.1", "255.255.255.255", "2001:db8::1", "::",
                                  "::ffff:1.2.3.4", "fe80::1%eth0"])
def test_packed_is_ipaddress_bytes(text: str) -> None:
    assert _packed(text) == ipaddress.ip_address(text).packed


@pytest.mark.parametrize("text", ["10.0.0.256", "1.2.3", "zz::1", "", "10.0.0.1/24"])
def test_bad_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        _packed(text)


def test_mixed_families_are_refused() -> None:
    with pytest.raises(ValueError, match="different families"):
        frame(src_ip="10.0.0.1", dst_ip="2001:db8::1", proto="udp")


def test_lines_made_once_are_taken_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second plan of the same entries takes the first one's lines (none made again),
    in the same order as making them; another split of the entries takes them too."""
    from ovsndu.ovs import replay

    entries = [e for e in CASES if replay_reason(e) is None]
    fresh = replay.conntrack_lines(entries)
    made: replay.Replayed = {}
    assert replay.conntrack_lines(entries, made=made) == fresh
    assert len(made) == len(entries)

    def refuse(*_args: object) -> list[object]:
        raise AssertionError("made again")

    monkeypatch.setattr(replay, "conntrack_packets", refuse)
    assert replay.conntrack_lines(entries, made=made) == fresh
    first, later = entries[:2], entries[2:]
    assert (replay.conntrack_lines(first, related_to=entries, made=made)
            + replay.conntrack_lines(later, related_to=entries, made=made)) == [
        line for e in entries for line in fresh_lines(e)]


def fresh_lines(entry: Conntrack) -> list[str]:
    return [p.line() for p in conntrack_packets(entry)]


_ADDRS = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.9.0.1", "fd00::1", "fd00::2"])
_NUMS = st.sampled_from(["0", "8", "53", "1024"])


@st.composite
def _ct_tuples(draw: st.DrawFn) -> tuple[str, str]:
    """An original and a reply tuple as dump-conntrack prints them: with ports, with an
    ICMP id/type/code, or addresses only; the reply reversed or NATed at random."""
    shape = draw(st.sampled_from(["ports", "icmp", "bare"]))
    a, b, c, d = (draw(_ADDRS) for _ in range(4))

    def tup(src: str, dst: str) -> str:
        text = f"src={src},dst={dst}"
        if shape == "ports":
            text += f",sport={draw(_NUMS)},dport={draw(_NUMS)}"
        elif shape == "icmp":
            text += f",id={draw(_NUMS)},type={draw(_NUMS)},code={draw(_NUMS)}"
        return text

    return tup(a, b), tup(draw(st.sampled_from([b, c])), draw(st.sampled_from([a, d])))


@settings(max_examples=400, deadline=None)
@given(_ct_tuples())
def test_derive_nat_fast_paths_are_the_field_by_field_answer(pair: tuple[str, str]) -> None:
    orig, reply = pair
    assert derive_nat(orig, reply) == _derived_nat(orig, reply)


def test_derive_nat_portless_cases() -> None:
    orig = "src=10.0.0.1,dst=10.0.0.2,id=7,type=8,code=0"
    assert derive_nat(orig, "src=10.0.0.2,dst=10.0.0.1,id=7,type=0,code=0") == ""
    assert derive_nat(orig, "src=10.0.0.2,dst=10.9.0.1,id=7,type=0,code=0") == "src=10.9.0.1"
    assert derive_nat(orig, "src=10.9.0.2,dst=10.0.0.1,id=7,type=0,code=0") == "dst=10.9.0.2"


def _reference_check(category: str, want: tuple[Entry, ...], got: tuple[Entry, ...],
                     elapsed: float) -> Shortfall | None:
    """check_category's traffic rule as it was: every entry encoded and matched."""
    d = diff_category(category, want, got)
    missing = tuple(e for e in d.removed if not ended_naturally(e, elapsed))
    changed = tuple((a, b) for a, b in d.changed if not _traffic_may_change(a, b))
    return Shortfall(category, missing, (), changed) if missing or changed else None


_CT = st.builds(Conntrack, protocol=st.sampled_from(["tcp", "udp"]),
                orig=st.sampled_from(["src=1.1.1.1,dst=2.2.2.2", "src=1.1.1.2,dst=2.2.2.2",
                                      "src=1.1.1.3,dst=2.2.2.2"]),
                reply=st.sampled_from(["src=2.2.2.2,dst=1.1.1.1", "src=2.2.2.2,dst=9.9.9.9"]),
                zone=st.integers(0, 1), mark=st.integers(0, 1),
                nat=st.sampled_from(["", "src=9.9.9.9"]),
                timeout=st.one_of(st.none(), st.integers(0, 10)))
_FDB = st.builds(FdbEntry, bridge=st.just("br0"), port=st.sampled_from(["1", "2"]),
                 vlan=st.integers(0, 1), mac=st.sampled_from(["00:00:00:00:00:01",
                                                              "00:00:00:00:00:02"]),
                 static=st.booleans(), age=st.one_of(st.none(), st.integers(0, 400)))


@settings(max_examples=400)
@given(st.data())
def test_traffic_check_by_identity_is_the_reference(data: st.DataObject) -> None:
    """Unique identities on both sides take the identity path (repeated ones the diff):
    the same shortfall, in the same order, either way."""
    category, entries = data.draw(st.sampled_from([("conntrack", _CT), ("fdb", _FDB)]))
    want = tuple(data.draw(st.lists(entries, max_size=8)))
    got = tuple(data.draw(st.lists(entries, max_size=8)))
    elapsed = data.draw(st.sampled_from([0.0, 5.0]))
    assert check_category(category, want, got, elapsed=elapsed) == _reference_check(
        category, want, got, elapsed)
    assert check_category(category, want, got, elapsed=elapsed, digests=(
        category_digest(want), category_digest(got))) == _reference_check(
        category, want, got, elapsed)
