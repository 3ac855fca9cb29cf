"""Fidelity of non-flow state, judged by OVS's own tools (issue 10).

Sandbox A holds the state corpus (``ovsndu.testing.state_corpus``): conntrack of every
protocol the userspace conntrack tracks, IPv4 and IPv6, zones, mark, labels, SNAT,
DNAT, FTP/TFTP helpers and related data connections; FDB on access, trunk and
native-VLAN ports and on bonds; TLV maps with class/type 0 and a 124-byte option; numbered and
named meters.  ``ovsndu restore`` of A's snapshot file into a fresh vswitchd B (on a
copy of A's database) must leave B's raw tool output equal to A's: conntrack without
timeouts, FDB without ages, ``dump-tlv-map``, ``dump-meters``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.model import Snapshot
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.state_corpus import (
    BRIDGE,
    VLAN_BRIDGE,
    populate_conntrack,
    populate_fdb,
    populate_openflow_extras,
    raw_conntrack,
    raw_fdb,
    raw_ofctl,
)
from tests.conftest import require_ovs


@pytest.fixture(name="corpus", scope="module")
def _corpus() -> Iterator[Sandbox]:
    require_ovs()
    with Sandbox() as sb:
        populate_conntrack(sb)
        populate_fdb(sb)
        populate_openflow_extras(sb)
        yield sb


def _meters(sb: Sandbox) -> list[str]:
    """dump-meters, one block per meter, sorted (the switch prints them in hash order)."""
    text = raw_ofctl(sb, BRIDGE, "dump-meters", version="OpenFlow13")
    return sorted(block.strip() for block in text.split("\n\n")[0:] if "meter=" in block)


def _raw(sb: Sandbox) -> dict[str, object]:
    return {
        "conntrack": raw_conntrack(sb),
        "conntrack -m": raw_conntrack(sb, verbose=True),
        "fdb": raw_fdb(sb, VLAN_BRIDGE),
        "tlv": raw_ofctl(sb, BRIDGE, "dump-tlv-map"),
        "meters": _meters(sb),
    }


@pytest.fixture(name="restored", scope="module")
def _restored(corpus: Sandbox, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[dict[str, object], Sandbox, subprocess.CompletedProcess[str]]]:
    """A's raw output, then B after ``ovsndu restore`` of A's snapshot file."""
    tmp = tmp_path_factory.mktemp("fidelity")
    before = _raw(corpus)
    snap = read_snapshot(corpus.rundir, corpus.db)
    path = tmp / "a.json"
    path.write_text(json.dumps(snap.to_dict()))
    with Sandbox(tmp / "run", db_file=corpus.copy_db(tmp / "conf.db")) as target:
        r = subprocess.run([sys.executable, "-m", "ovsndu", "restore", str(path), "--rundir",
                            str(target.rundir)], capture_output=True, text=True, check=False)
        yield before, target, r


def test_corpus_covers_the_surface(corpus: Sandbox) -> None:
    """The corpus really holds what the issue lists (a test of the test)."""
    ct = "\n".join(raw_conntrack(corpus))
    for needle in ("tcp,", "udp,", "icmp,", "icmpv6,", "sctp,", "47,", "50,", "dccp,",
                   "udplite,", "src=fd00::1", "helper=ftp", "helper=tftp", "mark=7",
                   "labels=0xf000000000000000000000000000000e", "dst=10.9.9.9",
                   "src=10.8.8.8", "zone=12"):
        assert needle in ct, needle
    related = [line for line in corpus.appctl("dpctl/dump-conntrack", "-m").splitlines()
               if "parent=(" in line]
    assert len(related) == 4, related  # TFTP data; FTP active, passive, IPv6 active
    fdb = "\n".join(raw_fdb(corpus, VLAN_BRIDGE))
    for vlan in (10, 20, 30, 40, 50, 60, 70, 80):
        assert f" {vlan} " in fdb, vlan
    bonded = [row for row in raw_fdb(corpus, VLAN_BRIDGE) if row.split()[0] in
              ("11", "12", "13", "14")]
    assert len(bonded) >= 3 and any(row.endswith("static") for row in bonded), bonded
    tlv = raw_ofctl(corpus, BRIDGE, "dump-tlv-map")
    assert "      0  0x80     124  tun_metadata5" in tlv
    assert "meter=slowpath" in "\n".join(_meters(corpus))


def test_restore_keeps_raw_output(
        restored: tuple[dict[str, object], Sandbox, subprocess.CompletedProcess[str]]) -> None:
    """Exit 0, verified, nothing uncarried; every raw dump of B equals A's."""
    before, target, r = restored
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and "anomaly" not in r.stdout, r.stdout
    after = _raw(target)
    for name, text in before.items():
        assert after[name] == text, name


def test_snapshot_of_b_equals_a(corpus: Sandbox, restored: tuple[dict[str, object], Sandbox,
                                                                 object]) -> None:
    """Our digests agree with the tools (a second opinion) for these categories."""
    _, target, _ = restored
    a = read_snapshot(corpus.rundir, corpus.db)
    b = read_snapshot(target.rundir, target.db)
    for name in ("conntrack", "fdb", "tlv_mappings", "meters"):
        assert a.digest(name) == b.digest(name), name
    assert isinstance(a, Snapshot)


def test_every_reachable_tcp_state_pair_is_replayed(tmp_path: Path) -> None:
    """Each (orig, reply) state pair the userspace TCP state machine reaches — the
    hand-written sequences and the searched ones — comes back exactly, IPv4 and IPv6,
    and with the window scales (flags WINDOW_SCALE, wscale) the SYNs announced."""
    from ovsndu.model import Conntrack
    from ovsndu.ovs.replay import (
        SEARCHED_REPLY_NO_SYN,
        SEARCHED_REPLY_SYN,
        SEARCHED_TCP_SEQUENCES,
        TCP_SEQUENCES,
    )
    from ovsndu.ovs.restore import restore_snapshot

    require_ovs()
    pairs = sorted(set(TCP_SEQUENCES) | set(SEARCHED_TCP_SEQUENCES))
    assert len(pairs) >= 16
    entries = []
    for i, (so, sr) in enumerate(pairs):
        for a, b in (("10.3.0.1", "10.3.0.2"), ("fd03::1", "fd03::2")):
            entries.append(Conntrack(
                protocol="tcp", orig=f"src={a},dst={b},sport={30000 + i},dport=443",
                reply=f"src={b},dst={a},sport=443,dport={30000 + i}", zone=i,
                state_orig=so, state_reply=sr))
    # Window scaling announced by both SYNs, or by the original side's only.
    ws = "WINDOW_SCALE"
    for n, (pairs_ws, flags_r, scale_r) in enumerate(((SEARCHED_REPLY_SYN, ws, 9),
                                                      (SEARCHED_REPLY_NO_SYN, "", 0))):
        for i, (so, sr) in enumerate(sorted(pairs_ws)):
            entries.append(Conntrack(
                protocol="tcp", orig=f"src=10.4.0.1,dst=10.4.0.2,sport={31000 + 100 * n + i},"
                f"dport=443", reply=f"src=10.4.0.2,dst=10.4.0.1,sport=443,"
                f"dport={31000 + 100 * n + i}", state_orig=so, state_reply=sr,
                tcp_flags_orig=ws, wscale_orig=7, tcp_flags_reply=flags_r, wscale_reply=scale_r))
    with Sandbox(tmp_path / "run") as sb:
        populate_conntrack(sb)
        sb.appctl("dpctl/flush-conntrack")
        wanted = read_snapshot(sb.rundir, sb.db).replace("conntrack", entries)
        with Sandbox(tmp_path / "b", db_file=sb.copy_db(tmp_path / "b.db")) as target:
            restore_snapshot(wanted, target.rundir, target.db)
            got = read_snapshot(target.rundir, target.db)
    def seen(e: Conntrack) -> tuple[object, ...]:
        return (e.orig, e.state, e.tcp_flags_orig, e.wscale_orig, e.tcp_flags_reply,
                e.wscale_reply)

    got_seen = {seen(e) for e in got.categories["conntrack"]}  # type: ignore[arg-type]
    want_seen = {seen(e) for e in entries}
    assert got_seen == want_seen, (sorted(want_seen - got_seen), sorted(got_seen - want_seen))
    assert got.digest("conntrack") == wanted.digest("conntrack")
