"""Parsers of OVS 3.1 dump text (texts captured from a real 3.1.0 vswitchd)."""

from __future__ import annotations

import pytest

from ovsndu.errors import ParseError
from ovsndu.ovs import appctl_parsers, parsers

FLOWS = """\
OFPST_FLOW reply (OF1.5) (xid=0x2):
 cookie=0x0, duration=0.055s, table=0, n_packets=0, n_bytes=0, idle_age=0, priority=100,tun_metadata0=0x1234 actions=goto_table:1
 cookie=0x0, duration=0.029s, table=0, n_packets=3, n_bytes=180, idle_timeout=300, send_flow_rem importance=5, idle_age=0, priority=50,ip actions=meter:1,ct(commit,zone=5,exec(set_field:0x1->ct_mark)),group:1
 cookie=0xabc, duration=0.006s, table=1, n_packets=0, n_bytes=0, idle_age=0, priority=10 actions=NORMAL
 cookie=0x1, duration=1.000s, table=3, n_packets=0, n_bytes=0, hard_timeout=9, idle_age=0, hard_age=1, ip actions=drop
"""

NOSTATS = """\
 idle_timeout=300, send_flow_rem priority=50,ip actions=drop
 cookie=0xabc, table=1, priority=10 actions=NORMAL
"""


def test_flows_with_stats() -> None:
    """Header fields, flags, importance, match and actions are separated exactly."""
    flows = parsers.parse_flows("br0", FLOWS)
    assert [(f.table, f.priority, f.match, f.cookie) for f in flows] == [
        (0, 100, "tun_metadata0=0x1234", "0x0"),
        (0, 50, "ip", "0x0"),
        (1, 10, "", "0xabc"),
        (3, 32768, "ip", "0x1"),
    ]
    f = flows[1]
    assert (f.idle_timeout, f.flags, f.importance, f.n_packets, f.n_bytes) == (
        300,
        ("send_flow_rem",),
        5,
        3,
        180,
    )
    assert f.actions == "meter:1,ct(commit,zone=5,exec(set_field:0x1->ct_mark)),group:1"
    assert flows[3].hard_timeout == 9
    assert f.spec() == (
        "table=0,cookie=0x0,priority=50,idle_timeout=300,importance=5,"
        "send_flow_rem,ip actions=" + f.actions
    )


def test_flows_without_stats() -> None:
    """A flag glued to the match by a space still parses."""
    a, b = parsers.parse_flows("br0", NOSTATS)
    assert (a.flags, a.priority, a.match, a.idle_timeout) == (("send_flow_rem",), 50, "ip", 300)
    assert (b.table, b.cookie, b.priority, b.match) == (1, "0xabc", 10, "")


@pytest.mark.parametrize(
    "line",
    [
        " cookie=0x0, priority=1 drop",
        " cookie=0x0, bogus=1, priority=1,ip actions=drop",
        " cookie=0x0, table=x, priority=1,ip actions=drop",
        " cookie=0x0, frobnicate priority=1,ip actions=drop",
    ],
)
def test_flow_garbage(line: str) -> None:
    """Lines that are not flows raise ParseError quoting the line."""
    with pytest.raises(ParseError, match="cannot parse flow"):
        parsers.parse_flows("br0", line)


def test_groups() -> None:
    """Selection method, properties and buckets are kept; spec re-creates the text."""
    text = (
        "OFPST_GROUP_DESC reply (OF1.5) (xid=0x2):\n"
        " group_id=1,type=select,selection_method=hash,fields=ip_src,bucket=bucket_id:0,"
        "weight:10,actions=output:1,bucket=bucket_id:1,weight:20,actions=output:2\n"
        " group_id=2,type=all,bucket=bucket_id:0,actions=output:1\n"
    )
    g1, g2 = parsers.parse_groups("br0", text)
    assert (g1.type, g1.selection_method, len(g1.buckets)) == ("select", "hash", 2)
    assert g1.spec() == text.splitlines()[1].strip()
    assert (g2.type, g2.selection_method, g2.buckets) == (
        "all",
        None,
        ("bucket_id:0,actions=output:1",),
    )


def test_meters_span_lines() -> None:
    """A meter's bands follow on their own lines."""
    text = (
        "OFPST_METER_CONFIG reply (OF1.3) (xid=0x2):\nmeter=1 pktps burst stats bands=\n"
        "type=drop rate=100 burst_size=20\n\nmeter=2 kbps bands=\ntype=drop rate=1000\n"
    )
    m1, m2 = parsers.parse_meters("br0", text)
    assert (m1.meter_id, m1.flags, m1.bands) == (
        1,
        ("pktps", "burst", "stats"),
        ("type=drop rate=100 burst_size=20",),
    )
    assert m1.spec() == "meter=1,pktps,burst,stats,bands=type=drop,rate=100,burst_size=20"
    assert m2.spec() == "meter=2,kbps,bands=type=drop,rate=1000"
    with pytest.raises(ParseError):
        parsers.parse_meters("br0", "meter=x kbps bands=\n")


def test_conntrack_and_nat() -> None:
    """Zone, mark, labels, TCP states and NAT come out of dump-conntrack -m -s."""
    text = (
        "tcp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=1234,dport=80),reply=(src=10.0.0.2,"
        "dst=10.0.0.1,sport=80,dport=1234),id=0,zone=7,status=0,timeout=29,mark=42,"
        "labels=0x1234,protoinfo=(state_orig=SYN_SENT,state_reply=CLOSED,flags_orig=0,"
        "flags_reply=0)\n"
        "udp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=5555,dport=53),reply=(src=10.0.0.2,"
        "dst=10.9.9.9,sport=53,dport=4000),id=0,status=0,timeout=59\n"
        "udp,orig=(src=fd00::1,dst=fd00::2,sport=5,dport=6),reply=(src=fd00::99,"
        "dst=fd00::1,sport=4000,dport=5),id=0,status=0,timeout=59\n"
    )
    tcp, udp, udp6 = appctl_parsers.parse_conntrack(text)
    assert (tcp.zone, tcp.mark, tcp.labels, tcp.state, tcp.timeout, tcp.nat) == (
        7,
        42,
        "0x1234",
        "SYN_SENT/CLOSED",
        29,
        "",
    )
    assert (udp.zone, udp.nat, udp.state) == (0, "src=10.9.9.9:4000", None)
    assert udp6.nat == "dst=[fd00::99]:4000"
    with pytest.raises(ParseError, match="conntrack"):
        appctl_parsers.parse_conntrack("tcp,zone=1\n")


def test_fdb_routes_neighbours_tlv_dpif() -> None:
    """The unixctl tables."""
    fdb = appctl_parsers.parse_fdb(
        "br0",
        " port  VLAN  MAC                Age\n"
        "    1     0  50:54:00:00:00:01    3\n"
        "LOCAL    10  50:54:00:00:00:02  static\n",
    )
    assert [(e.port, e.vlan, e.static, e.age) for e in fdb] == [
        ("1", 0, False, 3),
        ("LOCAL", 10, True, None),
    ]
    routes = appctl_parsers.parse_routes(
        "Route Table:\nCached: 127.0.0.1/32 dev lo SRC 127.0.0.1 local\n"
        "User: 10.6.0.0/16 MARK 7 dev br0 GW 192.168.1.253 SRC 192.168.1.1\n"
    )
    assert [(r.kind, r.prefix, r.dev, r.gateway, r.pkt_mark, r.local) for r in routes] == [
        ("cached", "127.0.0.1/32", "lo", None, 0, True),
        ("user", "10.6.0.0/16", "br0", "192.168.1.253", 7, False),
    ]
    (n,) = appctl_parsers.parse_tnl_neigh(
        "IP                MAC                 Bridge\n=========\n"
        "192.168.1.2       aa:bb:cc:dd:ee:02   br0\n"
    )
    assert (n.ip, n.mac, n.bridge) == ("192.168.1.2", "aa:bb:cc:dd:ee:02", "br0")
    (t,) = parsers.parse_tlv_map(
        "br0", "  class  type  length  match field\n 0xffff  0x80       4  tun_metadata0\n"
    )
    assert t.spec() == "{class=0xffff,type=0x80,len=4}->tun_metadata0"
    ports = appctl_parsers.parse_dpif_ports(
        "netdev@ovs-netdev: hit:0 missed:3\n  br0:\n"
        "    br0 65534/100: (dummy-internal)\n"
        "    p1 1/1: (dummy)\n"
    )
    assert ports == {("br0", "br0"): 100, ("br0", "p1"): 1}
    for bad, fn in [
        ("1 0 mac", lambda t: appctl_parsers.parse_fdb("br0", t)),
        ("User: 1.0.0.0/8 via x", appctl_parsers.parse_routes),
        ("1.1.1.1 nomac br0", appctl_parsers.parse_tnl_neigh),
    ]:
        with pytest.raises(ParseError):
            fn(bad)
