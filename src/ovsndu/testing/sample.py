"""Sample state in every category, put into a sandbox by real OVS commands and packets.

The demo, the tests and the benchmarks share it.  Conntrack and FDB entries are
created by injecting real frames (``netdev-dummy/receive``) through ``ct(commit)``
and ``NORMAL`` flows, as traffic would; nothing is written into OVS directly.
"""

from __future__ import annotations

import subprocess

from ovsndu.ovs.sandbox import Sandbox

MAC = "50:54:00:00:00:{:02x}"

BR0_FLOWS = (
    # conntrack: TCP with zone, mark and label; its reply direction; UDP with SNAT; ICMP
    "table=0,priority=300,tcp,in_port=1,actions=ct(commit,zone=7,"
    "exec(set_field:42->ct_mark,set_field:0x1234->ct_label)),output:2",
    "table=0,priority=300,tcp,in_port=2,actions=ct(commit,zone=7),output:1",
    "table=0,priority=300,udp,in_port=1,actions=ct(commit,zone=9,nat(src=10.9.9.9:4000)),output:2",
    "table=0,priority=300,icmp,in_port=2,actions=ct(commit,zone=5,exec(set_field:1->ct_mark)),"
    "output:1",
    "table=0,priority=100,tun_metadata0=0x1234,actions=goto_table:1",
    "table=0,priority=10,actions=goto_table:1",
    "table=1,priority=50,cookie=0x10,ip,nw_dst=10.20.0.0/16,actions=meter:1,group:1",
    "table=1,priority=40,cookie=0x10,ip,nw_dst=10.30.0.0/16,actions=group:2",
    "table=1,priority=0,actions=goto_table:2",
    "table=2,priority=20,idle_timeout=600,hard_timeout=3600,importance=7,send_flow_rem,"
    "cookie=0xfeed,ip,nw_src=10.99.0.1,actions=drop",
    "table=2,priority=0,actions=NORMAL",
)

BR0_GROUPS = (
    "group_id=1,type=select,selection_method=hash,fields(ip_src,ip_dst),"
    "bucket=bucket_id:0,weight:10,actions=output:1,bucket=bucket_id:1,weight:20,actions=output:2",
    "group_id=2,type=all,bucket=bucket_id:0,actions=output:1,"
    "bucket=bucket_id:1,actions=output:3",
)

BR0_METERS = (
    "meter=1,pktps,burst,stats,bands=type=drop,rate=1000,burst_size=100",
    "meter=2,kbps,bands=type=drop,rate=50000",
)

BR1_FLOWS = (
    "table=0,priority=100,ip,actions=meter:5,goto_table:1",
    "table=0,priority=0,actions=NORMAL",
    "table=1,priority=0,actions=NORMAL",
)


def populate(sb: Sandbox, *, tap_br0: bool = False) -> None:
    """Bridges br0 (netdev, all OpenFlow versions) and br1 (OpenFlow 1.0 and 1.3 only).

    *tap_br0*: vswitchd runs without ``--enable-dummy=override``, so br0's internal port
    is a kernel tap: it gets its address with ip(8) instead of ``netdev-dummy/ip4addr``.
    """
    sb.vsctl(
        "--", "add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
        "other-config:datapath-id=00000000000000b0", "other-config:hwaddr=02:00:00:00:b0:00",
        "--", "add-port", "br0", "p1", "--", "set", "interface", "p1", "type=dummy",
        "ofport_request=1",
        "--", "add-port", "br0", "p2", "--", "set", "interface", "p2", "type=dummy",
        "ofport_request=2",
        "--", "add-port", "br0", "p3", "tag=10", "--", "set", "interface", "p3", "type=dummy",
        "ofport_request=3",
        "--", "add-port", "br0", "gnv0", "--", "set", "interface", "gnv0", "type=geneve",
        "options:remote_ip=192.168.1.2", "options:key=flow", "ofport_request=10",
        "--", "add-br", "br1", "--", "set", "bridge", "br1", "datapath_type=netdev",
        "protocols=OpenFlow10,OpenFlow13", "other-config:hwaddr=02:00:00:00:b1:00",
        "--", "add-port", "br1", "p4", "--", "set", "interface", "p4", "type=dummy",
        "ofport_request=4",
    )
    sb.ofctl("br0", "add-tlv-map", "{class=0xffff,type=0x80,len=4}->tun_metadata0,"
             "{class=0x0102,type=0x01,len=8}->tun_metadata1")
    for meter in BR0_METERS:
        sb.ofctl("br0", "add-meter", meter, version="OpenFlow13")
    sb.ofctl("br1", "add-meter", "meter=5,kbps,bands=type=drop,rate=2000", version="OpenFlow13")
    sb.ofctl("br0", "add-groups", "-", input_text="\n".join(BR0_GROUPS) + "\n")
    sb.ofctl("br0", "del-flows")
    sb.ofctl("br0", "add-flows", "-", input_text="\n".join(BR0_FLOWS) + "\n")
    sb.ofctl("br1", "del-flows", version="OpenFlow13")
    sb.ofctl("br1", "add-flows", "-", input_text="\n".join(BR1_FLOWS) + "\n",
             version="OpenFlow13")
    if tap_br0:
        for argv in (("ip", "addr", "add", "192.168.1.1/24", "dev", "br0"),
                     ("ip", "link", "set", "br0", "up")):
            subprocess.run(argv, check=True, capture_output=True)
    else:
        sb.appctl("netdev-dummy/ip4addr", "br0", "192.168.1.1/24")
    sb.appctl("ovs/route/add", "10.5.0.0/16", "br0", "192.168.1.254")
    sb.appctl("ovs/route/add", "10.6.0.0/16", "br0", "192.168.1.253", "pkt_mark=7")
    sb.appctl("tnl/neigh/set", "br0", "192.168.1.2", "aa:bb:cc:dd:ee:02")
    sb.appctl("tnl/neigh/set", "br0", "192.168.1.3", "aa:bb:cc:dd:ee:03")
    sb.appctl("fdb/add", "br0", "p2", "0", MAC.format(0x99))
    inject_traffic(sb)


def _eth(src: int, dst: int) -> str:
    return f"eth(src={MAC.format(src)},dst={MAC.format(dst)})"


def _ipv4(src: str, dst: str, proto: int) -> str:
    return f"eth_type(0x0800),ipv4(src={src},dst={dst},proto={proto},tos=0,ttl=64,frag=no)"


def inject_traffic(sb: Sandbox) -> None:
    """Frames that create conntrack entries (TCP established, UDP NAT, ICMP) and FDB entries."""
    a, b = "10.0.0.1", "10.0.0.2"
    frames = [
        ("p1", f"{_eth(1, 2)},{_ipv4(a, b, 6)},tcp(src=40000,dst=80),tcp_flags(syn)"),
        ("p2", f"{_eth(2, 1)},{_ipv4(b, a, 6)},tcp(src=80,dst=40000),tcp_flags(syn|ack)"),
        ("p1", f"{_eth(1, 2)},{_ipv4(a, b, 6)},tcp(src=40000,dst=80),tcp_flags(ack)"),
        ("p1", f"{_eth(1, 2)},{_ipv4(a, b, 17)},udp(src=5555,dst=53)"),
        ("p2", f"{_eth(2, 1)},{_ipv4(b, a, 1)},icmp(type=8,code=0)"),
        # non-IP frames reach NORMAL in table 2 and are learned (p3 is an access port, VLAN 10)
        ("p1", f"{_eth(0x11, 0x12)},eth_type(0x0806),arp(sip={a},tip={b},op=1,"
               f"sha={MAC.format(0x11)},tha=00:00:00:00:00:00)"),
        ("p2", f"{_eth(0x21, 0x11)},eth_type(0x88b5)"),
        ("p3", f"{_eth(0x31, 0x11)},eth_type(0x88b5)"),
    ]
    for port, flow in frames:
        sb.appctl("netdev-dummy/receive", port, flow)
    sb.appctl("netdev-dummy/receive", "p4", f"{_eth(0x41, 0x42)},eth_type(0x88b5)")
    # Packets of a datapath flow reach their rule's counters when the revalidators run:
    # wait for a round, so what the sample shows does not depend on timing.
    sb.appctl("revalidator/wait")
