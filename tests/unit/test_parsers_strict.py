"""Readers never drop what they do not understand; regressions of issue 10's parser defects.

Texts are as OVS 3.1.0 prints them (captured from a real vswitchd).
"""

from __future__ import annotations

import pytest

from ovsndu.errors import ParseError
from ovsndu.model import Conntrack
from ovsndu.ovs import appctl_parsers, parsers
from ovsndu.ovs.packets import crc32c, frame
from ovsndu.ovs.replay import conntrack_packets

TLV_DUMP = """\
NXT_TLV_TABLE_REPLY (OF1.5) (xid=0x2):
 max option space=256 max fields=64
 allocated option space=132

 mapping table:
  class  type  length  match field
 ------  ----  ------  --------------
 0xffff     0       4  tun_metadata0
      0  0x80     124  tun_metadata5
      0     0       4  tun_metadata63
"""


class TestTlv:
    def test_class_or_type_zero_and_length_124(self) -> None:
        """Defect 1: OVS prints 0 as ``0``; those rows were silently dropped."""
        maps = parsers.parse_tlv_map("br0", TLV_DUMP)
        assert [(t.tlv_class, t.tlv_type, t.length, t.index) for t in maps] == [
            ("0xffff", 0, 4, 0), ("0x0", 0x80, 124, 5), ("0x0", 0, 4, 63)]
        assert maps[1].spec() == "{class=0x0,type=0x80,len=124}->tun_metadata5"

    def test_allocated_space_is_checked(self) -> None:
        """A row the parser missed shows as allocated space it cannot account for."""
        text = TLV_DUMP.replace("allocated option space=132", "allocated option space=136")
        with pytest.raises(ParseError, match="allocated option space 136"):
            parsers.parse_tlv_map("br0", text)

    def test_unknown_line_raises(self) -> None:
        """A line that is neither a mapping nor a header is an error naming it."""
        with pytest.raises(ParseError, match="0xffff  zz"):
            parsers.parse_tlv_map("br0", TLV_DUMP + " 0xffff  zz  4  tun_metadata1\n")


class TestFlows:
    def test_default_priority_empty_match(self) -> None:
        """Defect 3: ``idle_age=0, actions=drop`` has an empty match, not ``idle_age=0,``."""
        text = (" cookie=0x0, duration=0.018s, table=0, n_packets=0, n_bytes=0, idle_age=7, "
                "actions=drop\n")
        (f,) = parsers.parse_flows("br0", text)
        assert (f.priority, f.match, f.actions, f.idle_age) == (32768, "", "drop", 7)
        again = text.replace("idle_age=7", "idle_age=8")
        assert parsers.parse_flows("br0", again)[0].canonical() == f.canonical()

    def test_aggregate_count(self) -> None:
        """The second count of flows."""
        text = "OFPST_AGGREGATE reply (OF1.5) (xid=0x2): packet_count=0 byte_count=0 flow_count=3"
        assert parsers.parse_aggregate_count(text) == 3
        with pytest.raises(ParseError, match="flows of br0"):
            parsers.check_count("flows of br0", 2, 3, "dump-aggregate")


class TestMeters:
    def test_named_meters(self) -> None:
        """Defect 4: ``meter=slowpath`` and ``meter=controller`` are meters, not errors."""
        text = ("OFPST_METER_CONFIG reply (OF1.3) (xid=0x2):\nmeter=slowpath pktps bands=\n"
                "type=drop rate=100\n\nmeter=controller pktps burst stats bands=\n"
                "type=drop rate=200 burst_size=20\n")
        slow, ctl = parsers.parse_meters("br0", text)
        assert (slow.meter_id, ctl.meter_id) == (0xFFFFFFFD, 0xFFFFFFFE)
        assert slow.spec() == "meter=slowpath,pktps,bands=type=drop,rate=100"
        assert ctl.spec() == "meter=controller,pktps,burst,stats,bands=type=drop,rate=200," \
            "burst_size=20"

    @pytest.mark.parametrize("line", ["meter=1 fast bands=", "meter=0 kbps bands=",
                                      "meter=other kbps bands="])
    def test_bad_meter_lines(self, line: str) -> None:
        """Unknown flags and ids are errors."""
        with pytest.raises(ParseError, match="meter"):
            parsers.parse_meters("br0", line + "\ntype=drop rate=1\n")

    def test_features(self) -> None:
        """A band type the datapath does not list is an error naming it."""
        features = parsers.parse_meter_features(
            "OFPST_METER_FEATURES reply (OF1.3) (xid=0x2):\n"
            "max_meter:262144 max_bands:8 max_color:0\nband_types: drop\n"
            "capabilities: kbps pktps burst stats\n")
        assert features == (frozenset({"drop"}), 8)
        (m,) = parsers.parse_meters("br0", "meter=1 kbps bands=\ntype=dscp_remark rate=1 "
                                    "prec_level=1\n")
        with pytest.raises(ParseError, match="dscp_remark"):
            parsers.check_meters("br0", [m], features)


CT = (
    "tcp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=42000,dport=21),reply=(src=10.0.0.2,"
    "dst=10.0.0.1,sport=21,dport=42000),id=0,zone=10,status=0,timeout=29,protoinfo=("
    "state_orig=SYN_SENT,state_reply=CLOSED,flags_orig=0,flags_reply=0),helper=ftp\n"
    "udp,orig=(src=10.1.0.2,dst=10.1.0.1,sport=3333,dport=42001),reply=(src=10.1.0.1,"
    "dst=10.1.0.2,sport=42001,dport=3333),id=0,zone=12,status=0,timeout=60,parent=("
    "src=10.1.0.1,dst=10.1.0.2,sport=42001,dport=69)\n"
    "sctp,orig=(src=fd00::1,dst=fd00::2,sport=0,dport=0),reply=(src=fd00::2,dst=fd00::1,"
    "sport=0,dport=0),id=0,zone=2,status=0,timeout=59,mark=3\n"
    "47,orig=(src=10.1.0.1,dst=10.1.0.2,sport=0,dport=0),reply=(src=10.1.0.2,dst=10.1.0.1,"
    "sport=0,dport=0),id=0,zone=1,status=0,timeout=29\n"
    "udplite,orig=(src=10.1.0.1,dst=10.1.0.2,sport=0,dport=0),reply=(src=10.1.0.2,"
    "dst=10.1.0.1,sport=0,dport=0),id=0,zone=1,status=0,timeout=59\n"
)


class TestConntrack:
    def test_helper_parent_and_other_protocols(self) -> None:
        """Defect 2: the helper is kept; a related entry keeps its parent."""
        ftp, tftp_data, sctp, gre, lite = appctl_parsers.parse_conntrack(CT)
        assert (ftp.helper, ftp.parent) == ("ftp", "")
        assert tftp_data.parent == "src=10.1.0.1,dst=10.1.0.2,sport=42001,dport=69"
        assert (sctp.protocol, sctp.mark, gre.protocol, lite.protocol) == (
            "sctp", 3, "47", "udplite")

    def test_counters_are_left_out(self) -> None:
        """``-s`` adds packets/bytes inside the tuples: volatile, not part of the tuple."""
        line = CT.splitlines()[3].replace("dport=0),reply", "dport=0,packets=3,bytes=180),reply")
        (e,) = appctl_parsers.parse_conntrack(line)
        assert e.orig == "src=10.1.0.1,dst=10.1.0.2,sport=0,dport=0"

    @pytest.mark.parametrize("bad", [
        CT.splitlines()[0] + ",frobnicate=1",
        CT.splitlines()[0].replace("zone=10", "zone=10 garbage"),
        "ospf," + CT.splitlines()[3].partition(",")[2],
        CT.splitlines()[3].replace("sport=0", "weird=0", 1),
    ])
    def test_unknown_text_raises(self, bad: str) -> None:
        """Unknown fields, protocols and trailing text name the line."""
        with pytest.raises(ParseError, match="conntrack"):
            appctl_parsers.parse_conntrack(bad)

    def test_stats_total(self) -> None:
        """The second count: ``dpctl/ct-stats-show``."""
        text = "Connections Stats:\n    Total: 11\n  TCP: 2\n  UDP: 2\n"
        assert appctl_parsers.parse_ct_stats_total(text) == 11

    def test_every_protocol_has_a_replay(self) -> None:
        """Defect 6: SCTP, GRE, UDP-Lite, IPv6: no more 'cannot be replayed'."""
        for entry in appctl_parsers.parse_conntrack(CT):
            packets = conntrack_packets(entry)
            assert packets, entry
        ftp = appctl_parsers.parse_conntrack(CT)[0]
        assert "alg=ftp" in conntrack_packets(ftp)[0].actions

    def test_unknown_helper_is_uncarried(self) -> None:
        """A helper OVS's ct() has no ALG for cannot be recreated: named, not guessed."""
        e = Conntrack(protocol="udp", orig="src=1.1.1.1,dst=2.2.2.2,sport=1,dport=2",
                      reply="src=2.2.2.2,dst=1.1.1.1,sport=2,dport=1", helper="sip")
        from ovsndu.ovs.replay import CannotReplay
        with pytest.raises(CannotReplay, match="helper sip"):
            conntrack_packets(e)


def test_sctp_frame_checksum() -> None:
    """SCTP's CRC32c (RFC 3720 test vector) and its place in the frame."""
    assert crc32c(b"\0" * 32) == 0x8A9136AA
    pkt = frame(src_ip="10.0.0.1", dst_ip="10.0.0.2", proto="sctp", sport=1, dport=2)
    sctp = pkt[14 + 20:]
    zeroed = sctp[:8] + b"\0\0\0\0" + sctp[12:]
    assert int.from_bytes(sctp[8:12], "little") == crc32c(zeroed)


class TestUnixctlTables:
    @pytest.mark.parametrize(("fn", "text"), [
        (appctl_parsers.parse_routes, "Route Table:\nKernel: 10.0.0.0/8 dev eth0\n"),
        (appctl_parsers.parse_routes, "garbage\n"),
        (appctl_parsers.parse_tnl_neigh, "10.0.0.9   aa:bb:cc:dd:ee:ff   br0   extra\n"),
        (lambda t: appctl_parsers.parse_fdb("br0", t), "    1     0  not-a-mac    3\n"),
        (appctl_parsers.parse_dpif_ports,
         "netdev@ovs-netdev: hit:0 missed:0\n  br0:\n  what is this\n"),
    ])
    def test_unknown_lines_raise(self, fn: object, text: str) -> None:
        """Each unixctl table names a line it does not understand instead of skipping it."""
        with pytest.raises(ParseError):
            fn(text)  # type: ignore[operator]

    def test_headers_are_recognised(self) -> None:
        """The real headers of empty tables parse to nothing."""
        assert appctl_parsers.parse_routes("Route Table:\n") == []
        assert appctl_parsers.parse_tnl_neigh(
            "IP                                            MAC                 Bridge\n"
            "==========================================================================\n") == []
        assert appctl_parsers.parse_fdb("br0", " port  VLAN  MAC                Age\n") == []


def test_window_scale_is_kept_and_replayed() -> None:
    """``-m`` shows the window scales the SYNs announced; they are kept and the replayed
    SYNs carry them (a TCP option: the header grows to 24 bytes)."""
    line = ("tcp,orig=(src=10.1.0.1,dst=10.1.0.2,sport=1,dport=2),reply=(src=10.1.0.2,"
            "dst=10.1.0.1,sport=2,dport=1),id=0,zone=1,status=0,protoinfo=(state_orig="
            "ESTABLISHED,state_reply=SYN_SENT,wscale_orig=7,wscale_reply=9,flags_orig="
            "WINDOW_SCALE,flags_reply=WINDOW_SCALE)")
    (e,) = appctl_parsers.parse_conntrack(line)
    assert (e.tcp_flags_orig, e.wscale_orig, e.tcp_flags_reply, e.wscale_reply) == (
        "WINDOW_SCALE", 7, "WINDOW_SCALE", 9)
    syn, synack = (bytes.fromhex(p.packet.hex()) for p in conntrack_packets(e))
    for pkt, shift in ((syn, 7), (synack, 9)):
        tcp = pkt[14 + 20:]
        assert tcp[12] >> 4 == 6 and tcp[20:24] == bytes((1, 3, 3, shift))
