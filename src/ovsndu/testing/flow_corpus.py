"""A corpus of OpenFlow rules over OVS's match fields and actions, added over 1.0, 1.3, 1.5.

Two families: every match field (with and without masks, with its prerequisites)
under cheap actions, and every action under the match it needs, each in several
tables, priorities, cookies, flags, importances and timeouts, added over the
OpenFlow versions that can express it.  Rules OVS refuses when they are added are
dropped (``populate_flows`` says how many); the rest is what a restore must keep.
Groups of every type with properties, and meters the rules use, come along.
"""

from __future__ import annotations

import itertools
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ovsndu.ovs.sandbox import Sandbox

BRIDGE = "bf"
PORTS = 4
VERSIONS = ("OpenFlow10", "OpenFlow13", "OpenFlow15")

# Match fields: one snippet each, prerequisites included.
MATCHES: tuple[str, ...] = (
    "in_port=1", "in_port=LOCAL", "dl_src=00:11:22:33:44:55",
    "dl_src=00:11:00:00:00:00/ff:ff:00:00:00:00",
    "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00", "dl_dst=aa:bb:cc:dd:ee:ff", "dl_type=0x88cc",
    "dl_vlan=10", "dl_vlan_pcp=3", "vlan_tci=0x1000/0x1000", "vlan_tci=0",
    "dl_vlan=10,dl_vlan_pcp=5",
    "ip", "ip,nw_src=10.0.0.1", "ip,nw_src=10.0.0.0/8", "ip,nw_dst=192.168.1.0/24",
    "ip,nw_dst=10.0.0.0/255.0.255.0", "ip,nw_proto=47", "ip,nw_tos=32", "ip,nw_ecn=1",
    "ip,nw_ttl=64",
    "ip,ip_frag=yes", "ip,ip_frag=first", "ip,ip_frag=later", "ip,ip_frag=no",
    "tcp,tp_src=80", "tcp,tp_dst=443", "tcp,tp_dst=0x100/0xff00", "tcp,tcp_flags=+syn-ack",
    "tcp,tcp_flags=0x012/0x0fff", "udp,tp_src=53", "udp,tp_dst=4789", "sctp,tp_dst=3868",
    "sctp,tp_src=9",
    "icmp,icmp_type=8", "icmp,icmp_type=0,icmp_code=0", "arp", "arp,arp_op=1",
    "arp,arp_spa=10.0.0.1",
    "arp,arp_tpa=10.0.0.0/24", "arp,arp_sha=00:00:00:00:00:01", "arp,arp_tha=00:00:00:00:00:02",
    "rarp", "ipv6", "ipv6,ipv6_src=2001:db8::1", "ipv6,ipv6_dst=2001:db8::/32",
    "ipv6,ipv6_label=0x12345", "ipv6,ipv6_src=fe80::/ffff::", "tcp6,tp_dst=22", "udp6,tp_src=546",
    "icmp6,icmp_type=128", "icmp6,icmp_type=135,nd_target=2001:db8::5",
    "icmp6,icmp_type=135,nd_sll=00:00:00:00:00:0a", "icmp6,icmp_type=136,nd_tll=00:00:00:00:00:0b",
    "icmp6,icmp_type=136,nd_target=fe80::1,nd_reserved=0", "ipv6,ip_frag=yes",
    "mpls", "mpls,mpls_label=100", "mpls,mpls_tc=3", "mpls,mpls_bos=1", "mpls,mpls_ttl=64",
    "metadata=0x1234", "metadata=0x10/0xf0", "reg0=1", "reg1=0x10/0xf0", "reg7=7",
    "reg15=0xffffffff",
    "xreg0=0x100000002", "xreg3=0x5/0xf", "xxreg1=0x1", "pkt_mark=0x5", "pkt_mark=0x1/0x1",
    "skb_priority=0x3", "tun_id=0x55", "tun_id=0x5/0xf", "tun_src=192.168.0.1",
    "tun_dst=192.168.0.2",
    "tun_ipv6_src=2001:db8::7", "tun_ipv6_dst=2001:db8::8", "tun_flags=+oam", "tun_tos=4",
    "tun_ttl=60", "tun_gbp_id=5", "tun_gbp_flags=1", "tun_metadata0=0x1",
    "tun_metadata1=0x10/0xf0", "tun_metadata2=0x0102",
    "ct_state=+trk", "ct_state=+trk+est-rel", "ct_state=+trk+new", "ct_state=-trk",
    "ct_state=+trk+inv", "ct_state=+trk+rpl", "ct_state=+trk+snat", "ct_state=+trk+dnat",
    "ct_zone=5", "ct_mark=0x1", "ct_mark=0x10/0xf0", "ct_label=0x1", "ct_label=0x1/0xff",
    "ct_state=+trk,ct_nw_proto=6", "ct_state=+trk,ip,ct_nw_src=10.0.0.1",
    "ct_state=+trk,ip,ct_nw_dst=10.0.0.2", "ct_state=+trk,ipv6,ct_ipv6_src=2001:db8::1",
    "ct_state=+trk,ipv6,ct_ipv6_dst=2001:db8::2", "ct_state=+trk,ct_nw_proto=17,ct_tp_src=53",
    "ct_state=+trk,ct_nw_proto=6,ct_tp_dst=80", "conj_id=7", "actset_output=1",
    "dp_hash=0x1/0xf", "recirc_id=0", "packet_type=(0,0x800)", "packet_type=(1,0x800)",
    "eth,ip,nw_proto=6", "ip,nw_src=10.1.0.0/16,nw_dst=10.2.0.0/16,tcp,tp_dst=8080",
    "udp,tp_dst=2152", "udp,tp_dst=6081", "nsh,nsh_spi=0x10", "nsh,nsh_si=5",
    "nsh,nsh_mdtype=1,nsh_c1=0x11", "nsh,nsh_flags=0", "nsh,nsh_ttl=10",
)

# Actions: (action text, the match it needs).
ACTIONS: tuple[tuple[str, str], ...] = (
    ("drop", ""), ("output:2", ""), ("NORMAL", ""), ("FLOOD", ""), ("ALL", ""), ("LOCAL", ""),
    ("IN_PORT", ""), ("CONTROLLER:128", ""), ("controller(reason=no_match,id=5)", ""),
    ("controller(userdata=01.02.03,pause)", ""), ("output:NXM_NX_REG0[0..15]", ""),
    ("enqueue:1:3", ""), ("set_queue:5,output:1", ""), ("pop_queue", ""),
    ("mod_vlan_vid:100,output:1", ""), ("mod_vlan_pcp:3,output:1", ""), ("strip_vlan,output:1", ""),
    ("push_vlan:0x8100,set_field:4196->vlan_vid,output:1", ""), ("pop_vlan", "dl_vlan=10"),
    ("mod_dl_src:00:00:00:00:00:01", ""), ("mod_dl_dst:00:00:00:00:00:02", ""),
    ("mod_nw_src:10.1.1.1", "ip"), ("mod_nw_dst:10.2.2.2", "ip"), ("mod_nw_tos:16", "ip"),
    ("mod_nw_ecn:2", "ip"), ("mod_nw_ttl:9", "ip"), ("dec_ttl", "ip"), ("dec_ttl(1,2,3)", "ip"),
    ("mod_tp_src:1000", "tcp"), ("mod_tp_dst:2000", "udp"),
    ("set_field:10.0.0.9->ip_dst", "ip"), ("set_field:2001:db8::9->ipv6_src", "ipv6"),
    ("set_field:0x5->tun_id", ""), ("set_field:192.168.0.9->tun_dst", ""),
    ("set_field:0x1->tun_metadata0", ""), ("set_field:0x10/0xf0->reg1", ""),
    ("set_field:5->ct_mark", ""), ("set_field:0x3->pkt_mark", ""),
    ("load:0x5->NXM_NX_REG2[]", ""), ("load:1->NXM_NX_REG3[0..3]", ""),
    ("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]", ""), ("move:NXM_NX_REG0[]->NXM_NX_REG1[]", ""),
    ("push:NXM_NX_REG0[],pop:NXM_NX_REG1[]", ""), ("set_mpls_label:5", "mpls"),
    ("set_mpls_tc:2", "mpls"), ("set_mpls_ttl:9", "mpls"), ("dec_mpls_ttl", "mpls"),
    ("push_mpls:0x8847", ""), ("pop_mpls:0x0800", "mpls"),
    ("resubmit(,5)", ""), ("resubmit:3", ""), ("resubmit(2,6)", ""),
    ("resubmit(,7,ct)", "ct_state=+trk,ip"),
    ("goto_table:200", ""), ("write_metadata:0x1/0x1", ""), ("clear_actions", ""),
    ("write_actions(output:1)", ""), ("meter:1,output:1", ""), ("group:1", ""), ("group:2", ""),
    ("group:3", ""), ("group:4", ""),
    ("ct(commit)", "ip"), ("ct(commit,zone=5)", "ip"),
    ("ct(table=10,zone=NXM_NX_REG6[0..15])", "ip"),
    ("ct(commit,exec(set_field:1->ct_mark))", "ip"),
    ("ct(commit,exec(set_field:0x1/0x1->ct_label))", "ip"),
    ("ct(commit,nat(src=10.0.0.1-10.0.0.5:1000-2000,random))", "ip"),
    ("ct(commit,nat(dst=10.0.0.9:80))", "tcp"), ("ct(nat)", "ip"), ("ct(commit,alg=ftp)", "tcp"),
    ("ct(commit,alg=tftp)", "udp"), ("ct_clear", ""), ("ct(commit,force)", "ip"),
    ("learn(table=20,idle_timeout=30,NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],"
     "output:NXM_OF_IN_PORT[])", ""),
    ("learn(table=21,hard_timeout=60,priority=5,cookie=0x9,delete_learned,"
     "eth_type=0x800,NXM_OF_IP_SRC[],load:NXM_NX_REG0[]->NXM_NX_REG1[])", "ip"),
    ("conjunction(7,1/2)", ""), ("conjunction(8,2/3)", ""),
    ("clone(set_field:1->reg0,output:2)", ""), ("check_pkt_larger(1500)->NXM_NX_REG0[0]", ""),
    ("note:01.02.03.04.05", ""), ("note:de.ad", ""),
    ("bundle(eth_src,0,hrw,ofport,members:1,2)", ""),
    ("bundle_load(eth_src,0,hrw,ofport,NXM_NX_REG0[],members:1,2)", ""),
    ("multipath(eth_src,50,modulo_n,1,0,NXM_NX_REG0[0..1])", ""),
    ("sample(probability=100,collector_set_id=1,obs_domain_id=2,obs_point_id=3)", ""),
    ("exit", ""), ("fin_timeout(idle_timeout=10,hard_timeout=20)", "tcp"),
    ("set_tunnel:0x10", ""), ("set_tunnel64:0x10", ""),
    ("encap(nsh(md_type=1)),output:1", ""), ("decap(),output:1", "nsh"),
    ("set_field:0x10->nsh_spi", "nsh"), ("dec_nsh_ttl", "nsh"),
    ("encap(ethernet),output:1", "packet_type=(1,0x800)"),
    ("mod_nw_src:10.0.0.1,mod_tp_src:5,output:1", "tcp"),
)

GROUPS: tuple[str, ...] = (
    "group_id=1,type=all,bucket=output:1,bucket=output:2",
    "group_id=2,type=select,selection_method=hash,fields(ip_src,nw_proto),"
    "bucket=bucket_id:0,weight:10,actions=output:1,bucket=bucket_id:1,weight:20,actions=output:2",
    "group_id=3,type=indirect,bucket=actions=set_field:5->reg0,output:3",
    "group_id=4,type=ff,bucket=watch_port:1,actions=output:1,bucket=watch_port:2,actions=output:2",
    "group_id=5,type=select,selection_method=dp_hash,bucket=output:1,bucket=output:2",
    "group_id=6,type=all,bucket=actions=group:3",
    "group_id=7,type=select,bucket=weight:5,watch_port:1,actions=output:1",
    "group_id=4294967040,type=all,bucket=output:4",
)
METERS: tuple[str, ...] = (
    "meter=1,pktps,bands=type=drop,rate=1000",
    "meter=2,kbps,burst,stats,bands=type=drop,rate=2000,burst_size=300",
)
TLV_MAP = "{class=0xffff,type=0x1,len=4}->tun_metadata0,{class=0xffff,type=0x2,len=8}" \
          "->tun_metadata1,{class=0x102,type=0x80,len=4}->tun_metadata2"


@dataclass(frozen=True)
class Rule:
    """One corpus rule and the OpenFlow version it is added with."""

    version: str
    text: str


def _variations(i: int) -> tuple[str, str]:
    """(version, the rule's head) for the *i*-th variation: tables 0-253, priorities 0-65535,
    cookies, timeouts, flags and importance spread over the corpus."""
    version = VERSIONS[i % 3]
    table = (i * 37) % 254
    priority = (i * 7919) % 65536
    head = [f"table={table}", f"priority={priority}", f"cookie={hex(i * 0x10001)}"]
    if i % 4 == 1:
        head.append(f"idle_timeout={(i % 600) + 60}")
    if i % 5 == 2:
        head.append(f"hard_timeout={(i % 900) + 300}")
    if version != "OpenFlow10":
        head += [("send_flow_rem", "check_overlap", "no_packet_counts", "no_byte_counts",
                  "reset_counts")[i % 5]] if i % 3 == 2 else []
    elif i % 6 == 0:
        head.append("send_flow_rem")
    if version == "OpenFlow15" and i % 7 == 3:
        head.append(f"importance={i % 100 + 1}")
    return version, ",".join(head)


def rules() -> list[Rule]:
    """Every candidate rule (some are refused by OVS when added; see populate_flows)."""
    out: list[Rule] = []
    n = itertools.count()
    for match in MATCHES:
        for action in ("drop", "output:3", "resubmit(,9)", "NORMAL", "note:aa"):
            i = next(n)
            version, head = _variations(i)
            out.append(Rule(version, f"{head},{match},actions={action}"))
    for k, (action, needs) in enumerate(ACTIONS):
        for v in range(6):
            i = next(n)
            version, head = _variations(i)
            match = ",".join(p for p in (needs, f"reg9={k * 8 + v}") if p)
            out.append(Rule(version, f"{head},{match},actions={action}"))
    return out


def populate_flows(sb: Sandbox, bridge: str = BRIDGE) -> tuple[list[Rule], list[Rule]]:
    """Bridge, ports, TLV map, meters, groups and the rules; (added, refused by OVS)."""
    sb.vsctl("add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=dummy",
             "protocols=OpenFlow10,OpenFlow13,OpenFlow14,OpenFlow15")
    for p in range(1, PORTS + 1):
        sb.vsctl("add-port", bridge, f"{bridge}p{p}", "--", "set", "interface", f"{bridge}p{p}",
                 "type=dummy", f"ofport_request={p}")
    sb.ofctl(bridge, "add-tlv-map", TLV_MAP)
    for meter in METERS:
        sb.ofctl(bridge, "add-meter", meter, version="OpenFlow13")
    sb.ofctl(bridge, "add-groups", "-", input_text="\n".join(GROUPS) + "\n")
    target = f"unix:{sb.rundir / bridge}.mgmt"

    def add(rule: Rule) -> bool:
        return subprocess.run(["ovs-ofctl", "-O", rule.version, "add-flow", target, rule.text],
                              capture_output=True, check=False, timeout=30).returncode == 0

    candidates = rules()
    with ThreadPoolExecutor(max_workers=4) as pool:
        accepted = list(pool.map(add, candidates))
    added = [r for r, ok in zip(candidates, accepted, strict=True) if ok]
    refused = [r for r, ok in zip(candidates, accepted, strict=True) if not ok]
    return added, refused


def keywords(rules_: list[Rule]) -> set[str]:
    """The distinct match fields and action names the rules use."""
    out = set()
    for r in rules_:
        head, _, actions = r.text.partition(",actions=")
        for word in head.split(","):
            out.add("match:" + word.split("=")[0].split("(")[0])
        for token in actions.replace("(", ",").replace(")", ",").split(","):
            name = token.split(":")[0].split("=")[0].strip()
            if name and name.isidentifier():
                out.add("action:" + name)
    return out - {f"match:{k}" for k in ("table", "priority", "cookie", "idle_timeout",
                                          "hard_timeout", "importance")}


def raw_openflow(sb: Sandbox, bridge: str = BRIDGE) -> dict[str, list[str]]:
    """What OVS's tools print of the bridge's OpenFlow state, without counters, sorted:
    flows (OpenFlow 1.5, --no-stats), groups (1.5), meters (1.3, one block each), TLV map."""
    def lines(text: str) -> list[str]:
        return sorted(ln for ln in text.splitlines() if ln.strip() and " reply (" not in ln)

    meters = sb.ofctl(bridge, "dump-meters", version="OpenFlow13")
    return {
        "flows": lines(sb.ofctl(bridge, "dump-flows", options=("--no-stats", "--no-names"))),
        "groups": lines(sb.ofctl(bridge, "dump-groups", options=("--no-names",))),
        "meters": sorted(b.strip() for b in meters.split("\n\n") if "meter=" in b),
        "tlv_mappings": lines(sb.ofctl(bridge, "dump-tlv-map")),
    }
