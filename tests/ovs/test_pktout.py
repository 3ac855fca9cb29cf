"""Packet-outs encoded from per-kind templates (ovsndu.ovs.pktout) are, byte for byte, the
bundle ``ovs-ofctl bundle`` encodes from their lines: every conntrack kind the state
corpus makes in a real vswitchd (TCP states, UDP, ICMP, ICMPv6, SCTP, other protocols,
IPv4 and IPv6, zones, SNAT/DNAT with and without ports, mark and labels, FTP and TFTP
helpers, a related connection), the benchmark's mix, and FDB learning packet-outs."""

from __future__ import annotations

import pytest

from ovsndu.errors import VswitchdError
from ovsndu.model import Conntrack
from ovsndu.ovs import ofbundle, pktout
from ovsndu.ovs.ofbundle import CapturedBundle
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.replay import PacketOut, conntrack_packet_outs, replay_reason
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.state_corpus import ftp_frames, populate_conntrack
from tests.conftest import require_ovs


@pytest.fixture(name="corpus", scope="module")
def _corpus() -> list[PacketOut]:
    require_ovs()
    with Sandbox() as sb:
        populate_conntrack(sb)
        for port, packet in ftp_frames():
            sb.appctl("netdev-dummy/receive", port, packet.hex())
        found = [e for e in read_snapshot(sb.rundir, sb.db).categories["conntrack"]
                 if isinstance(e, Conntrack)]
    entries = [e for e in found if replay_reason(e) is None]
    assert len(entries) >= 30 and len(found) - len(entries) <= 3
    assert {e.protocol for e in entries} >= {"tcp", "udp", "icmp", "icmpv6", "sctp", "47"}
    assert any(e.nat for e in entries) and any(e.mark for e in entries)
    assert any(int(e.labels, 16) for e in entries) and any(e.parent for e in entries)
    assert {e.helper for e in entries} >= {"ftp", "tftp"}
    outs = conntrack_packet_outs(entries)
    outs += conntrack_packet_outs([_mixed(i) for i in range(40)])
    outs += [PacketOut(str(port), bytes.fromhex(f"0200000000{port:02x}0200000000ff0800")
                       + bytes(46), "NORMAL") for port in (1, 2, 3)]
    return outs


def _mixed(i: int) -> Conntrack:
    """benchmarks.measure's idle mix: TCP established, UDP (some source-NATed), ICMP echo,
    over 8 zones."""
    src, zone = f"10.64.0.{i}", 100 + i % 8
    if i % 10 < 4:
        return Conntrack(protocol="tcp", orig=f"src={src},dst=10.128.0.1,sport=40000,"
                         "dport=443", reply=f"src=10.128.0.1,dst={src},sport=443,dport=40000",
                         zone=zone, state_orig="ESTABLISHED", state_reply="ESTABLISHED")
    if i % 10 < 8:
        nat = i % 10 == 7
        return Conntrack(protocol="udp", orig=f"src={src},dst=10.128.0.2,sport=5353,dport=53",
                         reply=f"src=10.128.0.2,dst={'10.200.0.1' if nat else src},sport=53,"
                         "dport=5353", zone=zone, nat="src=10.200.0.1" if nat else "",
                         timeout=20 if i % 10 < 6 else 50)
    return Conntrack(protocol="icmp", orig=f"src={src},dst=10.128.0.3,id={i},type=8,code=0",
                     reply=f"src=10.128.0.3,dst={src},id={i},type=0,code=0", zone=zone,
                     timeout=50)


def _fields(bundle: CapturedBundle) -> tuple[object, ...]:
    lines = {xid: ofbundle.line_of(bundle, xid) for xid in bundle.add_lines}
    return bundle.version, bundle.open_msg, bundle.adds, bundle.barrier, bundle.commit, lines


@pytest.mark.parametrize("version", ["OpenFlow14", "OpenFlow15"])
def test_bytes_are_ovs_ofctls(corpus: list[PacketOut], version: str) -> None:
    want = ofbundle.capture([p.line() for p in corpus], version)
    got = pktout.encode(corpus, version)
    assert len(got.add_lines) == len(corpus) > 100
    assert _fields(got) == _fields(want)
    # Fewer kinds than packet-outs: the point of the templates.
    assert len({(p.in_port, p.actions) for p in corpus}) < len(corpus) / 2


def test_a_sample_of_another_shape_goes_through_ovs_ofctl(
        corpus: list[PacketOut], monkeypatch: pytest.MonkeyPatch) -> None:
    """When the samples are not shaped as expected (no prefixes), the packet-outs are
    encoded by ovs-ofctl, all their lines at once."""
    calls: list[int] = []
    capture = ofbundle.capture

    def counted(lines: list[str], version: str) -> CapturedBundle:
        calls.append(len(lines))
        return capture(lines, version)

    monkeypatch.setattr(ofbundle, "capture", counted)
    monkeypatch.setattr(pktout, "_prefixes", lambda *_a: None)
    assert _fields(pktout.encode(corpus[:20], "OpenFlow15")) == _fields(
        capture([p.line() for p in corpus[:20]], "OpenFlow15"))
    assert calls == [20]


def test_an_action_ovs_refuses_is_an_error() -> None:
    require_ovs()
    bad = PacketOut("controller", bytes(60), "ct(commit,zone=70000)")
    with pytest.raises(VswitchdError, match="cannot encode"):
        pktout.encode([bad], "OpenFlow15")
