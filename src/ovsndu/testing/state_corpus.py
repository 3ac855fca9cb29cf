"""A corpus of non-flow state for fidelity tests, made by real OVS commands and frames.

Conntrack of every protocol the userspace conntrack tracks (TCP in several states,
UDP, ICMP, ICMPv6, SCTP, and "other" IP protocols such as GRE, ESP, DCCP, UDP-Lite,
IGMP), IPv4 and IPv6, many zones, mark, labels, SNAT, DNAT, ALG helpers (FTP,
TFTP) and a related TFTP data connection; FDB entries on access, trunk and
native-VLAN ports; TLV mappings with class or type 0 and lengths up to 124; numbered
and named meters.  Everything is put in by ``ovs-ofctl``/``ovs-appctl`` and by
frames injected with ``netdev-dummy/receive`` through ``ct(commit)`` and ``NORMAL``.

``raw_*`` return OVS's own tool output in a comparable form (sorted lines, ages and
timeouts left out): what the tests compare before and after a restore.
"""

from __future__ import annotations

import re

from ovsndu.ovs.packets import frame
from ovsndu.ovs.sandbox import Sandbox

BRIDGE = "brc"
MAC = "50:54:00:00:01:{:02x}"

# in_port=1 commits (zone/nat/alg chosen by the match), in_port=2 sees replies.
CT_FLOWS = (
    "table=0,priority=100,in_port=1,tcp,tp_dst=21,actions=ct(commit,zone=11,alg=ftp),output:2",
    "table=0,priority=100,in_port=2,tcp,tp_src=21,actions=ct(commit,zone=11,alg=ftp),output:1",
    "table=0,priority=100,in_port=2,tcp,tp_src=20,actions=ct(commit,zone=11),output:1",
    "table=0,priority=100,in_port=1,tcp,tp_dst=30000,actions=ct(commit,zone=11),output:2",
    "table=0,priority=100,in_port=1,tcp6,tp_dst=21,actions=ct(commit,zone=11,alg=ftp),output:2",
    "table=0,priority=100,in_port=2,tcp6,tp_src=21,actions=ct(commit,zone=11,alg=ftp),output:1",
    "table=0,priority=100,in_port=2,tcp6,tp_src=20,actions=ct(commit,zone=11),output:1",
    "table=0,priority=100,in_port=1,udp,tp_dst=69,actions=ct(commit,zone=12,alg=tftp),output:2",
    "table=0,priority=100,in_port=2,udp,nw_src=10.1.0.2,actions=ct(commit,zone=12),output:1",
    "table=0,priority=90,in_port=1,udp,nw_dst=10.1.0.9,"
    "actions=ct(commit,zone=9,nat(src=10.9.9.9:4000)),output:2",
    "table=0,priority=90,in_port=1,tcp,nw_dst=10.1.0.8,"
    "actions=ct(commit,zone=10,nat(dst=10.8.8.8:8080)),output:2",
    "table=0,priority=90,in_port=1,ip,nw_dst=10.1.0.13,"
    "actions=ct(commit,zone=13,exec(set_field:7->ct_mark,"
    "set_field:0xf000000000000000000000000000000e->ct_label)),output:2",
    "table=0,priority=90,in_port=1,ipv6,ipv6_dst=fd00::9,"
    "actions=ct(commit,zone=6,nat(src=fd00::99)),output:2",
    "table=0,priority=80,in_port=1,ip,nw_dst=10.1.0.20,actions=ct(commit),output:2",
    "table=0,priority=10,in_port=1,ip,actions=ct(commit,zone=1),output:2",
    "table=0,priority=10,in_port=1,ipv6,actions=ct(commit,zone=2,"
    "exec(set_field:3->ct_mark)),output:2",
    "table=0,priority=10,in_port=2,ip,actions=ct(zone=1),output:1",
    "table=0,priority=10,in_port=2,ipv6,actions=ct(zone=2),output:1",
    "table=0,priority=0,actions=drop",
)


def _eth(src: int, dst: int) -> str:
    return f"eth(src={MAC.format(src)},dst={MAC.format(dst)})"


def _v4(src: str, dst: str, proto: int) -> str:
    return f"eth_type(0x0800),ipv4(src={src},dst={dst},proto={proto},tos=0,ttl=64,frag=no)"


def _v6(src: str, dst: str, proto: int) -> str:
    return (f"eth_type(0x86dd),ipv6(src={src},dst={dst},label=0,proto={proto},tclass=0,"
            f"hlimit=64,frag=no)")


def _tcp(src: str, dst: str, sport: int, dport: int, flags: str, *, back: bool = False) -> str:
    ip = _v6 if ":" in src else _v4
    eth = _eth(2, 1) if back else _eth(1, 2)
    return f"{eth},{ip(src, dst, 6)},tcp(src={sport},dst={dport}),tcp_flags({flags})"


def conntrack_frames() -> list[tuple[str, str]]:
    """(port, odp flow) pairs that create the corpus's conntrack entries."""
    a, b = "10.1.0.1", "10.1.0.2"
    a6, b6 = "fd00::1", "fd00::2"
    out: list[tuple[str, str]] = []
    # TCP: established, SYN_SENT, closing states (zone 1); IPv6 established (zone 2)
    for sport, steps in (
        (40000, (("c1", "syn"), ("c2", "syn|ack"), ("c1", "ack"))),
        (40001, (("c1", "syn"),)),
        (40002, (("c1", "syn"), ("c2", "syn|ack"))),
        (40003, (("c1", "syn"), ("c2", "syn|ack"), ("c1", "ack"), ("c1", "fin|ack"))),
        (40004, (("c1", "syn"), ("c2", "syn|ack"), ("c1", "ack"), ("c1", "rst|ack"))),
    ):
        for port, flags in steps:
            back = port == "c2"
            out.append((port, _tcp(b, a, 80, sport, flags, back=True) if back
                        else _tcp(a, b, sport, 80, flags)))
    for port, flags in (("c1", "syn"), ("c2", "syn|ack"), ("c1", "ack")):
        back = port == "c2"
        out.append((port, _tcp(b6, a6, 443, 50000, flags, back=True) if back
                    else _tcp(a6, b6, 50000, 443, flags)))
    out += [
        # UDP unreplied and replied; ICMP echo replied, timestamp unreplied; ICMPv6 echo
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 17)},udp(src=5000,dst=53)"),
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 17)},udp(src=5001,dst=53)"),
        ("c2", f"{_eth(2, 1)},{_v4(b, a, 17)},udp(src=53,dst=5001)"),
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 1)},icmp(type=8,code=0)"),
        ("c2", f"{_eth(2, 1)},{_v4(b, a, 1)},icmp(type=0,code=0)"),
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 1)},icmp(type=13,code=0)"),
        ("c1", f"{_eth(1, 2)},{_v6(a6, b6, 58)},icmpv6(type=128,code=0)"),
        ("c1", f"{_eth(1, 2)},{_v6(a6, b6, 17)},udp(src=7,dst=7)"),
        # SCTP and other IP protocols, IPv4 and IPv6
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 132)},sctp(src=3868,dst=3868)"),
        ("c1", f"{_eth(1, 2)},{_v6(a6, b6, 132)},sctp(src=9,dst=9)"),
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 47)}"),
        ("c2", f"{_eth(2, 1)},{_v4(b, a, 47)}"),
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 50)}"),
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 33)}"),
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 136)}"),
        ("c1", f"{_eth(1, 2)},{_v6(a6, b6, 47)}"),
        # zone 0, NAT (SNAT UDP, DNAT TCP, SNAT IPv6), mark and labels
        ("c1", f"{_eth(1, 2)},{_v4(a, '10.1.0.20', 17)},udp(src=1,dst=2)"),
        ("c1", f"{_eth(1, 2)},{_v4(a, '10.1.0.9', 17)},udp(src=5555,dst=53)"),
        ("c1", _tcp(a, "10.1.0.8", 41000, 80, "syn")),
        ("c1", f"{_eth(1, 2)},{_v6(a6, 'fd00::9', 17)},udp(src=6,dst=6)"),
        ("c1", f"{_eth(1, 2)},{_v4(a, '10.1.0.13', 17)},udp(src=8,dst=8)"),
        # ALGs: an FTP control connection; a TFTP request and its related data connection
        ("c1", _tcp(a, b, 42000, 21, "syn")),
        ("c1", f"{_eth(1, 2)},{_v4(a, b, 17)},udp(src=42001,dst=69)"),
        ("c2", f"{_eth(2, 1)},{_v4(b, a, 17)},udp(src=3333,dst=42001)"),
    ]
    return out


def ftp_frames() -> list[tuple[str, bytes]]:
    """FTP sessions whose commands announce data connections, and those connections:
    active (PORT), passive (227) and IPv6 active (EPRT).  Real sequence numbers, so the
    ALG (and TCP sequence checking) accept them."""
    out: list[tuple[str, bytes]] = []
    for client, server, cport, command, data in (
        ("10.1.0.1", "10.1.0.2", 42100, b"PORT 10,1,0,1,164,117\r\n",
         ("c2", "10.1.0.2", "10.1.0.1", 20, 42101)),
        ("10.1.0.1", "10.1.0.2", 42200, b"227 Entering Passive Mode (10,1,0,2,117,48)\r\n",
         ("c1", "10.1.0.1", "10.1.0.2", 42201, 30000)),
        ("fd00::1", "fd00::2", 42300, b"EPRT |2|fd00::1|42301|\r\n",
         ("c2", "fd00::2", "fd00::1", 20, 42301)),
    ):
        x, y = 1000, 5000
        out += [
            ("c1", frame(src_ip=client, dst_ip=server, proto="tcp", sport=cport, dport=21,
                         flags="syn", seq=x)),
            ("c2", frame(src_ip=server, dst_ip=client, proto="tcp", sport=21, dport=cport,
                         flags="syn|ack", seq=y, ack=x + 1)),
            ("c1", frame(src_ip=client, dst_ip=server, proto="tcp", sport=cport, dport=21,
                         flags="ack", seq=x + 1, ack=y + 1)),
        ]
        if command.startswith(b"227"):
            out.append(("c2", frame(src_ip=server, dst_ip=client, proto="tcp", sport=21,
                                    dport=cport, flags="psh|ack", seq=y + 1, ack=x + 1,
                                    payload=command)))
        else:
            out.append(("c1", frame(src_ip=client, dst_ip=server, proto="tcp", sport=cport,
                                    dport=21, flags="psh|ack", seq=x + 1, ack=y + 1,
                                    payload=command)))
        port, src, dst, sport, dport = data
        out.append((port, frame(src_ip=src, dst_ip=dst, proto="tcp", sport=sport,
                                dport=dport, flags="syn", seq=9000)))
    return out


def populate_conntrack(sb: Sandbox, bridge: str = BRIDGE) -> None:
    """A netdev bridge with ports c1, c2 and the conntrack corpus in its datapath."""
    sb.vsctl("--may-exist", "add-br", bridge, "--", "set", "bridge", bridge,
             "datapath_type=netdev",
             "--", "add-port", bridge, "c1", "--", "set", "interface", "c1", "type=dummy",
             "ofport_request=1",
             "--", "add-port", bridge, "c2", "--", "set", "interface", "c2", "type=dummy",
             "ofport_request=2")
    sb.ofctl(bridge, "del-flows")
    sb.ofctl(bridge, "add-flows", "-", input_text="\n".join(CT_FLOWS) + "\n")
    for port, flow in conntrack_frames():
        sb.appctl("netdev-dummy/receive", port, flow)
    for port, packet in ftp_frames():
        sb.appctl("netdev-dummy/receive", port, packet.hex())


VLAN_BRIDGE = "brv"
# port -> (ovs-vsctl port settings, frames as (vlan or None, source MAC index))
VLAN_PORTS: dict[str, tuple[tuple[str, ...], tuple[tuple[int | None, int], ...]]] = {
    "v1": (("tag=10",), ((None, 0x10),)),                                  # access
    "v2": (("trunks=20,30",), ((20, 0x20), (30, 0x21))),                   # trunk
    "v3": (("tag=40", "vlan_mode=native-untagged", "trunks=40,50"),
           ((None, 0x30), (50, 0x31))),                                    # native, untagged
    "v4": (("tag=60", "vlan_mode=native-tagged", "trunks=60,70"),
           ((None, 0x40), (70, 0x41))),                                    # native, tagged
    "v5": ((), ((None, 0x50), (80, 0x51))),                                # all VLANs
}


# bond -> (mode, members with their OpenFlow port numbers)
BONDS = {"bond0": ("active-backup", (("b1", 11), ("b2", 12))),
         "bond1": ("balance-slb", (("b3", 13), ("b4", 14)))}


def populate_fdb(sb: Sandbox, bridge: str = VLAN_BRIDGE) -> None:
    """A NORMAL bridge whose ports are access, trunk and native-VLAN ports and bonds; each
    learns MACs from frames in the VLANs it carries; static entries on a port and a bond."""
    args = ["--may-exist", "add-br", bridge, "--", "set", "bridge", bridge,
            "datapath_type=netdev"]
    for i, (port, (settings, _)) in enumerate(sorted(VLAN_PORTS.items()), start=1):
        args += ["--", "add-port", bridge, port, *settings, "--", "set", "interface", port,
                 "type=dummy", f"ofport_request={i}"]
    for bond, (mode, members) in sorted(BONDS.items()):
        args += ["--", "add-bond", bridge, bond, *(m for m, _ in members), f"bond_mode={mode}"]
        for member, ofport in members:
            args += ["--", "set", "interface", member, "type=dummy", f"ofport_request={ofport}"]
    sb.vsctl(*args)
    for n, (_, (_, members)) in enumerate(sorted(BONDS.items())):
        for m, (member, _) in enumerate(members):  # the bond keeps what its active member gets
            sb.appctl("netdev-dummy/receive", member, f"eth(src={MAC.format(0x60 + 2 * n + m)},"
                      f"dst={MAC.format(0xEE)}),eth_type(0x88b5)")
    sb.appctl("fdb/add", bridge, "b1", "0", MAC.format(0x98))
    for port, (_, frames) in sorted(VLAN_PORTS.items()):
        for vlan, mac in frames:
            tag = f"eth_type(0x8100),vlan(vid={vlan},pcp=0),encap(" if vlan else ""
            flow = f"eth(src={MAC.format(mac)},dst={MAC.format(0xEE)}),{tag}eth_type(0x88b5)"
            sb.appctl("netdev-dummy/receive", port, flow + (")" if vlan else ""))
    sb.appctl("fdb/add", bridge, "v2", "20", MAC.format(0x99))


# TLV edge cases: class 0, type 0, the longest option (124 bytes), the last field.
TLV_MAP = ("{class=0xffff,type=0,len=4}->tun_metadata0,{class=0,type=0x80,len=124}->"
           "tun_metadata5,{class=0,type=0,len=8}->tun_metadata63,"
           "{class=0x102,type=0xff,len=4}->tun_metadata7")
METERS = (
    "meter=1,kbps,bands=type=drop,rate=1000",
    "meter=2,pktps,burst,stats,bands=type=drop,rate=100,burst_size=10",
    "meter=65535,kbps,burst,bands=type=drop,rate=5,burst_size=1,type=drop,rate=50,"
    "burst_size=7",
    "meter=slowpath,pktps,bands=type=drop,rate=100",
    "meter=controller,pktps,burst,stats,bands=type=drop,rate=200,burst_size=20",
)


def populate_openflow_extras(sb: Sandbox, bridge: str = BRIDGE) -> None:
    """TLV edge cases, numbered and named meters, and flows that use them."""
    sb.ofctl(bridge, "add-tlv-map", TLV_MAP)
    for meter in METERS:
        sb.ofctl(bridge, "add-meter", meter, version="OpenFlow13")
    sb.ofctl(bridge, "add-flows", "-", input_text=(
        "table=5,priority=10,tun_metadata0=0x1,actions=meter:1,output:2\n"
        "table=5,priority=11,tun_metadata5=0x1/0xff,actions=meter:65535,output:2\n"
        "table=5,priority=12,tun_metadata63=0x0102030405060708,actions=drop\n"
        "table=5,actions=drop\n"))


def raw_conntrack(sb: Sandbox, *, verbose: bool = False) -> list[str]:
    """``dpctl/dump-conntrack`` (no timeouts), sorted; *verbose*: with ``-m`` (TCP states of
    both sides, the parent of related entries), without the connection ``id=``."""
    text = sb.appctl("dpctl/dump-conntrack", *(["-m"] if verbose else []))
    return sorted(re.sub(r",id=\d+", "", line) for line in text.splitlines() if line.strip())


def raw_fdb(sb: Sandbox, bridge: str) -> list[str]:
    """``fdb/show`` rows without the Age column (``static`` kept), sorted."""
    rows = []
    for line in sb.appctl("fdb/show", bridge).splitlines()[1:]:
        words = line.split()
        if words:
            rows.append(" ".join(words[:3] + (["static"] if words[3] == "static" else [])))
    return sorted(rows)


def raw_ofctl(sb: Sandbox, bridge: str, command: str, version: str = "OpenFlow15",
              options: tuple[str, ...] = ()) -> str:
    """An ovs-ofctl dump without its xid (which counts requests)."""
    return re.sub(r" \(xid=0x[0-9a-f]+\)", "", sb.ofctl(bridge, command, version=version,
                                                         options=options))
