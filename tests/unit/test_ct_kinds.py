"""Conntrack kinds (ovsndu.model.ct_kinds): what the rehearsal replays of a large table.
Every field but the addresses, ports, ICMP id, mark/label values and timeout tells
kinds apart; one entry of each kind, and every ALG or related entry, is kept."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ovsndu.model import Conntrack
from ovsndu.model.ct_kinds import kind, representatives

TCP = Conntrack(protocol="tcp", orig="src=10.0.0.1,dst=10.0.0.2,sport=40000,dport=80",
                reply="src=10.0.0.2,dst=10.0.0.1,sport=80,dport=40000", zone=3,
                state_orig="ESTABLISHED", state_reply="ESTABLISHED", timeout=400)
ICMP = Conntrack(protocol="icmp", orig="src=10.0.0.1,dst=10.0.0.2,id=7,type=8,code=0",
                 reply="src=10.0.0.2,dst=10.0.0.1,id=7,type=0,code=0", zone=1, timeout=20)


@pytest.mark.parametrize("other", [
    replace(TCP, orig="src=10.0.9.9,dst=10.0.0.7,sport=1,dport=443",
            reply="src=10.0.0.7,dst=10.0.9.9,sport=443,dport=1"),
    replace(TCP, timeout=5),
    replace(TCP, mark=7),          # set: another kind than unset, the value aside
    replace(ICMP, orig="src=10.1.0.1,dst=10.0.0.2,id=9,type=8,code=0"),
], ids=["addresses-ports", "timeout", "mark-value", "icmp-id"])
def test_what_only_makes_connections_distinct_is_not_a_kind(other: Conntrack) -> None:
    base = TCP if other.protocol == "tcp" else ICMP
    if other.mark:
        base = replace(TCP, mark=1)
    assert kind(other) == kind(base)
    assert len(representatives([base, other])) == 1


@pytest.mark.parametrize("other", [
    replace(TCP, protocol="udp", state_orig=None, state_reply=None),
    replace(TCP, zone=4),
    replace(TCP, mark=1),
    replace(TCP, labels="0x1"),
    replace(TCP, state_orig="FIN_WAIT_1", state_reply="ESTABLISHED"),
    replace(TCP, state_reply="CLOSE_WAIT"),
    replace(TCP, nat="snat=10.9.0.2"),
    replace(TCP, tcp_flags_orig="WINDOW_SCALE"),
    replace(TCP, tcp_flags_reply="SACK_PERM"),
    replace(TCP, wscale_orig=7),
    replace(TCP, wscale_reply=2),
    replace(TCP, orig="src=fd00::1,dst=fd00::2,sport=40000,dport=80",
            reply="src=fd00::2,dst=fd00::1,sport=80,dport=40000"),
    replace(ICMP, orig="src=10.0.0.1,dst=10.0.0.2,id=7,type=13,code=0"),
    replace(ICMP, reply="src=10.0.0.2,dst=10.0.0.1,id=7,type=0,code=1"),
], ids=["protocol", "zone", "mark", "labels", "state-orig", "state-reply", "nat",
        "flags-orig", "flags-reply", "wscale-orig", "wscale-reply", "family",
        "icmp-type", "icmp-code"])
def test_every_other_field_makes_another_kind(other: Conntrack) -> None:
    base = ICMP if other.protocol == "icmp" else TCP
    assert kind(other) != kind(base)
    assert representatives([base, other]) == [base, other]


@pytest.mark.parametrize("nat", ["dnat=10.9.0.2", "snat=10.9.0.2-10.9.0.9",
                                 "snat=10.9.0.2:1000-2000", "snat=fd00::9"])
def test_nat_side_range_port_and_family_are_kinds(nat: str) -> None:
    assert kind(replace(TCP, nat="snat=10.9.0.2")) != kind(replace(TCP, nat=nat))
    assert kind(replace(TCP, nat="snat=10.9.0.3")) == kind(replace(TCP, nat="snat=10.9.0.2"))


def test_alg_and_related_entries_are_all_kept() -> None:
    ftp = replace(TCP, orig="src=10.0.0.1,dst=10.0.0.2,sport=40000,dport=21",
                  reply="src=10.0.0.2,dst=10.0.0.1,sport=21,dport=40000", helper="ftp")
    ftp2 = replace(ftp, orig="src=10.0.0.3,dst=10.0.0.2,sport=40000,dport=21",
                   reply="src=10.0.0.2,dst=10.0.0.3,sport=21,dport=40000")
    data = replace(TCP, orig="src=10.0.0.2,dst=10.0.0.1,sport=20,dport=50000",
                   reply="src=10.0.0.1,dst=10.0.0.2,sport=50000,dport=20",
                   parent=ftp.orig)
    data2 = replace(data, orig="src=10.0.0.2,dst=10.0.0.3,sport=20,dport=50000",
                    reply="src=10.0.0.3,dst=10.0.0.2,sport=50000,dport=20", parent=ftp2.orig)
    assert representatives([ftp, data, ftp2, data2]) == [ftp, data, ftp2, data2]


def test_large_table_keeps_one_of_each_kind_in_order() -> None:
    entries = []
    for i in range(3000):
        src = f"10.8.{i >> 8 & 0xFF}.{i & 0xFF}"
        if i % 3 == 0:
            entries.append(replace(TCP, orig=f"src={src},dst=10.9.0.1,sport=40000,dport=443",
                                   reply=f"src=10.9.0.1,dst={src},sport=443,dport=40000",
                                   zone=i % 8))
        elif i % 3 == 1:
            entries.append(replace(ICMP, orig=f"src={src},dst=10.9.0.1,id={i},type=8,code=0",
                                   reply=f"src=10.9.0.1,dst={src},id={i},type=0,code=0",
                                   zone=i % 8))
        else:
            entries.append(Conntrack(protocol="udp", orig=f"src={src},dst=10.9.0.1,sport=1,"
                                     "dport=53", reply=f"src=10.9.0.1,dst={src},sport=53,"
                                     "dport=1", zone=i % 8))
    kept = representatives(entries)
    assert len(kept) == 24  # 3 protocols × 8 zones
    assert {kind(e) for e in kept} == {kind(e) for e in entries}
    assert kept == [e for e in entries if e in kept]  # the first of each, in order
