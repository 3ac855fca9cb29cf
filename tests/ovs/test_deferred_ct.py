"""Conntrack entries replayed after forwarding resumed (ovsndu.ovs.ct_defer), against a real
vswitchd: what a stateful ACL does to a packet of a connection whose entry is not back yet,
and that the repair leaves every deferred entry as recorded.

The packet is real traffic: a frame received on a dummy port (``netdev-dummy/receive``)
goes through the datapath, an upcall and the pipeline like any other."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from ovsndu.model import Conntrack, Snapshot
from ovsndu.ovs.appctl_parsers import parse_conntrack
from ovsndu.ovs.ct_defer import split_for_gap
from ovsndu.ovs.packets import frame
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.replay import conntrack_packets
from ovsndu.ovs.restore import Restorer
from ovsndu.ovs.sandbox import Sandbox

A, B = "10.0.0.1", "10.0.0.2"
# New connections only from port 1 (A); established traffic both ways.
ONE_WAY = "ct_state=+trk+new,ip,in_port=1"
# New connections from either side: a reply packet meeting no entry is committed reversed.
BOTH_WAYS = "ct_state=+trk+new,ip"


def _acl(new_match: str) -> list[str]:
    return [
        "table=0,priority=100,ip,actions=ct(table=1,zone=3)",
        f"table=1,priority=100,{new_match},actions=ct(commit,zone=3),NORMAL",
        "table=1,priority=90,ct_state=+trk+est,ip,actions=NORMAL",
        "table=1,priority=0,actions=drop",
    ]


ENTRIES = (
    Conntrack(protocol="tcp", orig=f"src={A},dst={B},sport=40000,dport=80",
              reply=f"src={B},dst={A},sport=80,dport=40000", zone=3,
              state_orig="ESTABLISHED", state_reply="ESTABLISHED"),
    Conntrack(protocol="udp", orig=f"src={A},dst={B},sport=5000,dport=53",
              reply=f"src={B},dst={A},sport=53,dport=5000", zone=3),
)


def _setup(sb: Sandbox, new_match: str) -> Snapshot:
    sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
             "fail_mode=secure",
             "--", "add-port", "br0", "p1", "--", "set", "interface", "p1", "type=dummy",
             "ofport_request=1",
             "--", "add-port", "br0", "p2", "--", "set", "interface", "p2", "type=dummy",
             "ofport_request=2")
    for rule in _acl(new_match):
        sb.ofctl("br0", "add-flow", rule)
    lines = [p.line() for e in ENTRIES for p in conntrack_packets(e)]
    path = sb.rundir / "ct.bundle"
    path.write_text("\n".join(lines) + "\n")
    sb.appctl("dpctl/ct-disable-tcp-seq-chk")
    sb.ofctl("br0", "bundle", str(path))
    return read_snapshot(sb.rundir, sb.db)


def _table(sb: Sandbox) -> dict[tuple[object, ...], Conntrack]:
    return {e.identity(): e for e in parse_conntrack(sb.appctl("dpctl/dump-conntrack", "-m",
                                                               "-s"))}


def _drops(sb: Sandbox) -> int:
    (line,) = [ln for ln in sb.ofctl("br0", "dump-flows", "table=1").splitlines()
               if "actions=drop" in ln]
    return int(re.search(r"n_packets=(\d+)", line).group(1))  # type: ignore[union-attr]


def _reply_data(sb: Sandbox) -> None:
    """B's next data segment of the download (an ACK|PSH from the reply side) arrives."""
    pkt = frame(src_ip=B, dst_ip=A, proto="tcp", sport=80, dport=40000, flags="ack|psh",
                seq=0x20000001, ack=0x10000001)
    sb.appctl("netdev-dummy/receive", "p2", pkt.hex())


def test_idle_entries_wait_and_active_ones_go_first() -> None:
    tcp, udp = ENTRIES
    entries = [replace(tcp, timeout=86399),                                # active 1 s ago
               replace(tcp, orig=tcp.orig.replace("40000", "40001"),
                       reply=tcp.reply.replace("40000", "40001"), timeout=80000),  # idle
               replace(udp, timeout=28),                                   # replied, 2 s
               replace(udp, timeout=50),                                   # unreplied, 10 s
               replace(tcp, state_orig="SYN_SENT", state_reply="CLOSED", timeout=5)]
    first, later = split_for_gap(entries, 5.0)
    assert first == [entries[0], entries[2], entries[4]]
    assert later == [entries[3], entries[1]]                 # most recently active first


@pytest.mark.parametrize("new_match", [ONE_WAY, BOTH_WAYS], ids=["one-way", "both-ways"])
def test_a_packet_before_the_deferred_replay_is_misjudged_then_repaired(
        sandbox: Sandbox, new_match: str) -> None:
    snap = _setup(sandbox, new_match)
    want = {e.identity(): e for e in snap.categories["conntrack"] if isinstance(e, Conntrack)}
    assert len(want) == len(ENTRIES)
    sandbox.appctl("dpctl/flush-conntrack")

    restorer = Restorer(sandbox.rundir, sandbox.db)
    plan = restorer.plan(snap, encode=True, defer_window=0.0)
    assert {e.identity() for e in plan.ct_later} == set(want)
    assert not any(line.startswith("packet-out") for line in plan.bundles["br0"])
    restorer.apply(plan)
    assert _table(sandbox) == {}

    drops = _drops(sandbox)
    _reply_data(sandbox)  # forwarding has resumed; the download's entry is not back yet
    early = _table(sandbox)
    if new_match == ONE_WAY:
        # +new from B's side: the ACL drops it, nothing is committed.
        assert _drops(sandbox) == drops + 1
        assert early == {}
    else:
        # +new and allowed: committed as a connection from B to A, the wrong direction.
        (reversed_entry,) = early.values()
        assert reversed_entry.orig == ENTRIES[0].reply

    result = restorer.replay_later(plan)
    assert result == {"deferred": 2, "repaired": 0 if new_match == ONE_WAY else 1}
    got = _table(sandbox)
    for key, entry in want.items():
        assert key in got, f"deferred entry missing after the replay: {entry.orig}"
        assert (got[key].reply, got[key].nat) == (entry.reply, entry.nat)
    assert all(e.orig != ENTRIES[0].reply for e in got.values())  # the reversed one is gone

    # The download goes on: B's next segment is +est now and reaches A.
    drops = _drops(sandbox)
    _reply_data(sandbox)
    assert _drops(sandbox) == drops
