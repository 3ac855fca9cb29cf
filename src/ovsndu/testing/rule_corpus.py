"""A second corpus of OpenFlow rules, groups and meters for fidelity tests (issue 10).

Written independently of :mod:`ovsndu.testing.flow_corpus` (another generator, other
values and combinations), from the field and action reference (ovs-fields(7),
ovs-actions(7)): match fragments and action fragments, each with the packet context
its prerequisites need and the oldest OpenFlow version that expresses it, combined
round-robin into ~1,100 rules spread over tables 0-253 and priorities 0-65535, with
cookies, every flow-mod flag, importance and timeouts, added over OpenFlow 1.0, 1.3
and 1.5 (the protocol a rule is added with decides what OVS keeps of it), plus the
rules that broke the text round trip (defect 5).  Groups of every type with bucket
properties; numbered meters with drop bands, with and without burst and stats.
Named meters, TLV edge cases, conntrack and FDB are in
:mod:`ovsndu.testing.state_corpus`.

``install`` puts it all into a bridge of a sandbox; ``raw_*`` return what OVS's own
tools print for it (no statistics or durations): what the tests compare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ovsndu.ovs.sandbox import Sandbox

BRIDGE = "brr"
PORTS = 8
TLV_MAP = ("{class=0xffff,type=0x1,len=4}->tun_metadata1,"
           "{class=0x102,type=0x80,len=8}->tun_metadata2,"
           "{class=0xffff,type=0x3,len=16}->tun_metadata3")
V10, V13, V15 = "OpenFlow10", "OpenFlow13", "OpenFlow15"
ORDER = {V10: 0, V13: 1, V15: 2}

# Packet contexts: what a match establishes and an action may need.
ETH, IP, TCP, UDP, SCTP, ICMP, IP6, TCP6, UDP6, ICMP6, ARP, MPLS, VLAN, NSH = (
    "eth", "ip", "tcp", "udp", "sctp", "icmp", "ipv6", "tcp6", "udp6", "icmp6", "arp", "mpls",
    "vlan", "nsh")
ANY = (ETH, IP, TCP, UDP, SCTP, ICMP, IP6, TCP6, UDP6, ICMP6, ARP, VLAN)
L3 = (IP, TCP, UDP, SCTP, ICMP, IP6, TCP6, UDP6, ICMP6)
V4 = (IP, TCP, UDP, SCTP, ICMP)
L4 = (TCP, UDP, SCTP, TCP6, UDP6)


@dataclass(frozen=True)
class Frag:
    """A match or action fragment: its text, the context(s) and oldest protocol."""

    text: str
    ctx: tuple[str, ...]
    version: str = V10


def _m(text: str, ctx: str, version: str = V10) -> Frag:
    return Frag(text, (ctx,), version)


def _a(text: str, ctx: tuple[str, ...] = ANY, version: str = V10) -> Frag:
    return Frag(text, ctx, version)


MATCHES = [
    _m("", ETH), _m("in_port=1", ETH), _m("in_port=LOCAL", ETH),
    _m("dl_src=50:54:00:00:00:01", ETH), _m("dl_dst=50:54:00:00:00:02", ETH),
    _m("dl_dst=01:00:00:00:00:00/01:00:00:00:00:00", ETH),
    _m("dl_src=50:54:00:00:00:00/ff:ff:ff:ff:00:00", ETH),
    _m("dl_type=0x88cc", ETH), _m("dl_vlan=10", VLAN), _m("dl_vlan=10,dl_vlan_pcp=5", VLAN),
    _m("vlan_tci=0x1000/0x1000", VLAN), _m("vlan_tci=0", ETH),
    _m("metadata=0x5", ETH), _m("metadata=0x100/0xff00", ETH),
    _m("reg0=0x1", ETH), _m("reg3=0x10/0xf0", ETH), _m("reg7=7,reg8=8", ETH),
    _m("reg15=0xffffffff", ETH), _m("xreg1=0x1234567890", ETH),
    _m("xxreg2=0x1/0x1", ETH), _m("tun_id=0x64", ETH), _m("tun_id=0x100/0xf00", ETH),
    _m("tun_src=192.168.0.1", ETH), _m("tun_dst=192.168.0.0/16", ETH),
    _m("tun_ipv6_src=2001:db8::1", ETH), _m("tun_ipv6_dst=2001:db8::/64", ETH),
    _m("tun_flags=+oam", ETH),
    _m("tun_gbp_id=10", ETH), _m("tun_gbp_flags=1", ETH),
    _m("tun_metadata1=0x1234", ETH), _m("tun_metadata2=0x1/0xff", ETH),
    _m("tun_metadata3=0x112233445566778899aabbccddeeff00", ETH),
    _m("pkt_mark=0x9", ETH), _m("pkt_mark=0x10/0xf0", ETH),
    _m("ct_state=+trk+new", ETH), _m("ct_state=-trk", ETH), _m("ct_state=+trk+est-rel", ETH),
    _m("ct_zone=5", ETH), _m("ct_mark=0x7", ETH), _m("ct_mark=0x1/0x1", ETH),
    _m("ct_label=0x1", ETH), _m("ct_label=0x10000000000000000/0x10000000000000000", ETH),
    _m("conj_id=7", ETH), _m("actset_output=2", ETH),
    _m("recirc_id=0", ETH), _m("packet_type=(0,0)", ETH),
    _m("ip", IP), _m("ip,nw_src=10.0.0.1", IP), _m("ip,nw_dst=10.1.0.0/16", IP),
    _m("ip,nw_src=10.0.0.0/255.0.255.0", IP), _m("ip,nw_proto=47", IP),
    _m("ip,nw_tos=32", IP), _m("ip,ip_dscp=10", IP), _m("ip,nw_ecn=3", IP),
    _m("ip,nw_ttl=64", IP), _m("ip,ip_frag=first", IP), _m("ip,ip_frag=later", IP),
    _m("ip,ip_frag=no", IP), _m("ip,ct_state=+trk+new,ct_nw_src=10.0.0.5", IP),
    _m("ip,ct_state=+trk+new,ct_nw_dst=10.2.0.0/16", IP),
    _m("ip,ct_state=+trk+new,ct_nw_proto=6", IP),
    _m("tcp", TCP), _m("tcp,tp_dst=80", TCP), _m("tcp,tp_src=1024/0xfc00", TCP),
    _m("tcp,tcp_flags=+syn-ack", TCP), _m("tcp,tcp_flags=0x2/0x12", TCP),
    _m("tcp,ct_state=+trk+new,ct_nw_proto=6,ct_tp_dst=443", TCP),
    _m("udp", UDP), _m("udp,tp_dst=53", UDP), _m("udp,tp_src=0x8000/0x8000", UDP),
    _m("sctp,tp_dst=3868", SCTP), _m("sctp", SCTP),
    _m("icmp,icmp_type=8", ICMP), _m("icmp,icmp_type=3,icmp_code=4", ICMP),
    _m("ipv6", IP6), _m("ipv6,ipv6_src=2001:db8::1", IP6),
    _m("ipv6,ipv6_dst=fd00::/8", IP6), _m("ipv6,ipv6_label=0x12345", IP6),
    _m("ipv6,ipv6_src=::1/::ffff", IP6), _m("ipv6,nw_tos=4", IP6),
    _m("ipv6,ct_state=+trk+new,ct_ipv6_src=fd00::5", IP6),
    _m("ipv6,ct_state=+trk+new,ct_ipv6_dst=fd00::/16", IP6),
    _m("tcp6,tp_dst=22", TCP6), _m("udp6,tp_src=546", UDP6),
    _m("icmp6,icmp_type=128", ICMP6),
    _m("icmp6,icmp_type=135,nd_target=fe80::1", ICMP6),
    _m("icmp6,icmp_type=135,nd_sll=50:54:00:00:00:09", ICMP6),
    _m("icmp6,icmp_type=136,nd_tll=50:54:00:00:00:0a", ICMP6),
    _m("icmp6,icmp_type=136,nd_target=fe80::/64", ICMP6),
    _m("icmp6,icmp_type=135,nd_reserved=0x1", ICMP6),
    _m("icmp6,icmp_type=135,nd_options_type=1", ICMP6),
    _m("arp", ARP), _m("arp,arp_op=1", ARP), _m("arp,arp_spa=10.0.0.1", ARP),
    _m("arp,arp_tpa=10.0.0.0/24", ARP), _m("arp,arp_sha=50:54:00:00:00:03", ARP),
    _m("arp,arp_tha=50:54:00:00:00:00/ff:ff:ff:00:00:00", ARP),
    _m("rarp,arp_op=3", ARP),
    _m("mpls", MPLS), _m("mpls,mpls_label=100", MPLS), _m("mpls,mpls_tc=3", MPLS),
    _m("mpls,mpls_bos=1", MPLS), _m("mpls,mpls_ttl=5", MPLS),
    _m("mplsm,mpls_label=17", MPLS),
    _m("packet_type=(1,0x894f),nsh_spi=0x5", NSH),
    _m("packet_type=(1,0x894f),nsh_si=255", NSH),
    _m("packet_type=(1,0x894f),nsh_mdtype=1,nsh_c1=0x1", NSH),
    _m("packet_type=(1,0x894f),nsh_flags=2,nsh_ttl=10", NSH),
    _m("udp,tp_dst=2152,tun_gtpu_flags=0x30", UDP), _m("tun_gtpu_msgtype=255", ETH),
    _m("tun_erspan_ver=1,tun_erspan_idx=0x10", ETH),
    _m("tun_erspan_ver=2,tun_erspan_dir=1,tun_erspan_hwid=0x5", ETH),
]

# Actions.  Where an action needs a group or meter, the corpus installs it first.
ACTIONS = [
    _a("drop"), _a("output:1"), _a("output:2,output:3"), _a("in_port"), _a("LOCAL"),
    _a("NORMAL"), _a("FLOOD"), _a("ALL"), _a("CONTROLLER:128"),
    _a("controller(reason=no_match,id=3,userdata=01.02.03)"),
    _a("controller(reason=action,max_len=200,pause)"),
    _a("output(port=2,max_len=100)"), _a("output:NXM_NX_REG1[16..31]"),
    _a("enqueue:1:5"), _a("set_queue:5,output:1"), _a("set_queue:7,pop_queue,output:1"),
    _a("mod_vlan_vid:10,output:1"), _a("mod_vlan_pcp:3,output:1"),
    _a("strip_vlan,output:1", (VLAN,)),
    _a("push_vlan:0x8100,set_field:4196->vlan_vid,output:1", ANY, V13),
    _a("push_vlan:0x88a8,output:1", ANY, V13),
    _a("mod_dl_src:50:54:00:00:00:11,mod_dl_dst:50:54:00:00:00:12,output:1"),
    _a("mod_nw_src:10.9.0.1,output:1", V4), _a("mod_nw_dst:10.9.0.2,output:1", V4),
    _a("mod_nw_tos:16,output:1", L3), _a("mod_nw_ecn:2,output:1", L3),
    _a("mod_nw_ttl:9,output:1", L3),
    _a("mod_tp_src:1000,output:1", (TCP, UDP, TCP6, UDP6)),
    _a("mod_tp_dst:2000,output:1", (TCP, UDP, TCP6, UDP6)),
    _a("dec_ttl,output:1", L3), _a("dec_ttl(1,2,3),output:1", L3),
    _a("push_mpls:0x8847,set_mpls_label:9,set_mpls_tc:2,set_mpls_ttl:5,output:1"),
    _a("dec_mpls_ttl,output:1", (MPLS,)), _a("pop_mpls:0x0800,output:1", (MPLS,)),
    _a("set_field:0x1234->reg0"), _a("set_field:0xff/0xff->reg2,resubmit(,200)"),
    _a("set_field:0x5->tun_id,output:1"), _a("set_field:192.168.1.1->tun_dst,output:1"),
    _a("set_field:2001:db8::9->tun_ipv6_dst,output:1"),
    _a("set_field:fd00::1->ipv6_src,output:1", (IP6, TCP6, UDP6, ICMP6)),
    _a("set_field:0x3->metadata"), _a("set_field:50:54:00:00:00:99->eth_dst"),
    _a("set_field:0x8/0xc->pkt_mark"),
    _a("load:0x1->NXM_NX_REG1[0..7]"), _a("load:0xabcdef->NXM_NX_REG5[8..31]"),
    _a("move:NXM_NX_REG0[]->NXM_NX_REG1[]"), _a("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]"),
    _a("move:NXM_NX_TUN_ID[0..31]->NXM_NX_REG3[]"),
    _a("move:NXM_NX_XXREG0[0..31]->NXM_NX_REG3[]"),
    _a("resubmit:3"), _a("resubmit(,200)"), _a("resubmit(1,201)"),
    _a("ct(table=250,zone=1)", L3),
    _a("set_tunnel:0x5,output:1"), _a("set_tunnel64:0x1234567890,output:1"),
    _a("multipath(eth_src,50,modulo_n,1,0,NXM_NX_REG0[0..5])"),
    _a("multipath(symmetric_l4,1024,hrw,12,0,NXM_NX_REG0[0..3])"),
    _a("bundle(eth_src,0,active_backup,ofport,members:1,2)"),
    _a("bundle(symmetric_l4,60,hrw,ofport,members:2,3,4)"),
    _a("bundle_load(eth_src,0,hrw,ofport,NXM_NX_REG0[],members:4,8)"),
    _a("learn(table=10,idle_timeout=60,hard_timeout=120,priority=5,cookie=0x5,"
       "fin_idle_timeout=1,fin_hard_timeout=2,NXM_OF_VLAN_TCI[0..11],"
       "NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],load:NXM_OF_IN_PORT[]->NXM_NX_REG0[0..15],"
       "output:NXM_OF_IN_PORT[])"),
    _a("learn(table=11,delete_learned,send_flow_rem,eth_type=0x800,ip_src=ip_dst,"
       "load:0x5->NXM_NX_REG1[])", (IP,)),
    _a("learn(table=12,limit=10,result_dst=NXM_NX_REG7[0],eth_src)"),
    _a("note:01.02.03.04.05"), _a("note:aa.bb,output:1"), _a("exit"),
    _a("fin_timeout(idle_timeout=5,hard_timeout=10)", (TCP, TCP6)),
    _a("conjunction(1,1/2)"), _a("conjunction(2,2/3)"),
    _a("ct(commit)", L3), _a("ct(zone=5,table=251)", L3),
    _a("ct(commit,zone=NXM_NX_REG0[0..15])", L3),
    _a("ct(commit,exec(set_field:0x1->ct_mark))", L3),
    _a("ct(commit,exec(set_field:0x2/0x3->ct_label,set_field:5->ct_mark))", L3),
    _a("ct(commit,nat(src=10.0.0.1-10.0.0.9:1000-2000,random))", V4),
    _a("ct(commit,nat(dst=10.1.1.1:80,persistent,hash))", (TCP, UDP)),
    _a("ct(nat,table=252)", L3), _a("ct(commit,nat(dst=[fd00::1]:8080))", (TCP6, UDP6)),
    _a("ct(commit,alg=ftp)", (TCP,)), _a("ct(commit,alg=tftp)", (UDP,)),
    _a("ct(commit,force,zone=3)", L3), _a("ct_clear,output:1"),
    _a("clone(output:1,set_field:1->reg0,resubmit(,200))"),
    _a("clone(mod_nw_src:10.8.0.1,output:2),output:3", V4),
    _a("check_pkt_larger(1500)->NXM_NX_REG0[0],resubmit(,200)"),
    _a("sample(probability=1000,collector_set_id=1,obs_domain_id=2,obs_point_id=3)"),
    _a("sample(probability=65535,collector_set_id=5,obs_domain_id=6,obs_point_id=7,"
       "sampling_port=1,egress)"),
    _a("meter:1,output:1", ANY, V13), _a("meter:2,output:2", ANY, V13),
    _a("meter:3,NORMAL", ANY, V13),
    _a("group:1"), _a("group:2"), _a("group:3"), _a("group:4"), _a("group:12"),
    _a("write_metadata:0x1/0xff,goto_table:253", ANY, V13), _a("goto_table:253"),
    _a("write_actions(output:1)"), _a("clear_actions"),
    _a("output:1,write_actions(group:1),goto_table:253"),
    _a("controller(reason=no_match,id=3,meter_id=1)"),
    _a("encap(nsh(md_type=1)),set_field:0x10->nsh_spi,encap(ethernet),output:1", ANY, V13),
    _a("encap(nsh(md_type=2,tlv(0x1000,10,0x12345678))),output:2", ANY, V13),
    _a("decap(),output:1", (NSH,), V13), _a("dec_nsh_ttl,output:1", (NSH,), V13),
    _a("set_field:0x1->nsh_c1,output:1", (NSH,)),
    _a("push:NXM_NX_REG0[],pop:NXM_NX_REG1[]"),
    _a("delete_field:tun_metadata1,output:1"),
    _a("ct(commit),set_field:0x7->reg9,output:1", L3),
]

# Rules whose printed text OVS's parser refuses or that only OpenFlow 1.0 expresses
# (issue 10, defect 5), added over the protocol that allows them.
EXTRA = [
    (V10, "table=250,priority=1051,ip,actions=fin_timeout(idle_timeout=10,hard_timeout=20),"
          "output:1"),
    (V10, "table=250,priority=1052,mpls,actions=load:10->OXM_OF_MPLS_LABEL[0..19],output:2"),
    (V10, "table=250,priority=1053,ip,actions=load:1->NXM_NX_IP_ECN[0..1],output:2"),
    (V10, "table=250,priority=1054,udp,tp_dst=2152,tun_gtpu_flags=0x30,actions=drop"),
    (V10, "table=250,priority=1055,actions=mod_nw_tos:8,output:3"),
    (V10, "table=250,priority=1056,arp,actions=mod_tp_dst:99,output:3"),
    (V13, "table=250,priority=1057,ip,actions=set_field:2->nw_ecn,output:2"),
    (V15, "table=250,priority=1058,tun_metadata1=0x5,actions=delete_field:tun_metadata1,"
          "output:2"),
]

GROUPS = [
    "group_id=1,type=all,bucket=output:1,bucket=output:2",
    "group_id=2,type=select,bucket=weight:10,output:1,bucket=weight:20,output:2",
    "group_id=3,type=indirect,bucket=output:3",
    "group_id=4,type=ff,bucket=watch_port:1,output:1,bucket=watch_port:2,output:2",
    "group_id=5,type=select,selection_method=hash,fields(eth_src,ip_dst,tcp_dst),"
    "bucket=bucket_id:5,weight:100,output:3,bucket=bucket_id:9,weight:50,output:4",
    "group_id=6,type=select,selection_method=dp_hash,"
    "bucket=bucket_id:0,output:1,bucket=bucket_id:1,output:2",
    "group_id=7,type=select,selection_method=hash,selection_method_param=7,fields(ip_src),"
    "bucket=output:5",
    "group_id=8,type=ff,bucket=watch_group:3,group:3,bucket=watch_port:4,output:4",
    "group_id=9,type=all",
    "group_id=10,type=indirect,bucket=set_field:5->reg0,mod_dl_dst:50:54:00:00:00:77,"
    "resubmit(,200)",
    "group_id=4294967040,type=all,bucket=output:1",
    "group_id=11,type=select,bucket=weight:0,output:1,bucket=weight:65535,output:2",
    "group_id=12,type=all,bucket=group:1,bucket=ct(commit),output:6",
]

METERS = [
    "meter=1,kbps,bands=type=drop,rate=1000",
    "meter=2,pktps,burst,stats,bands=type=drop,rate=100,burst_size=50",
    "meter=3,kbps,burst,bands=type=drop,rate=10000,burst_size=2000",
    "meter=4,pktps,stats,bands=type=drop,rate=1",
    "meter=5,kbps,stats,bands=type=drop,rate=4294967295",
    "meter=100,pktps,bands=type=drop,rate=7",
    "meter=65535,kbps,burst,stats,bands=type=drop,rate=500,burst_size=1",
]

FLAGS = ["", "send_flow_rem,", "check_overlap,", "reset_counts,", "no_packet_counts,",
         "no_byte_counts,", "send_flow_rem,reset_counts,no_packet_counts,no_byte_counts,"]
FLAG_VERSION = {"no_packet_counts,": V13, "no_byte_counts,": V13, "reset_counts,": V13,
                "send_flow_rem,reset_counts,no_packet_counts,no_byte_counts,": V13}
TARGET = 1100


def _fits(match: Frag, action: Frag) -> bool:
    return match.ctx[0] in action.ctx


def _later(*versions: str) -> str:
    return max(versions, key=ORDER.__getitem__)


def rules() -> list[tuple[str, str]]:
    """(protocol to add it with, rule text), ~1,100 rules, unique per table/priority/match."""
    out: list[tuple[str, str]] = []
    versions = (V10, V13, V15)
    i = 0
    seen: set[tuple[int, int, str]] = set()
    while len(out) < TARGET:
        action = ACTIONS[i % len(ACTIONS)]
        fits = [m for m in MATCHES if _fits(m, action)]
        match = fits[(i * 7 + i // len(ACTIONS)) % len(fits)]
        table = (i * 37) % 254
        if "goto_table" in action.text:
            table = i % 253
        priority = 0 if i == 5 else 65535 if i == 6 else (i * 61) % 65536
        flags = FLAGS[i % len(FLAGS)]
        cookie = f"cookie={hex(i * 0x10001)}," if i % 3 else ""
        timeouts = ("idle_timeout=3000," if i % 5 == 1 else "") + (
            "hard_timeout=6000," if i % 7 == 2 else "")
        version = _later(versions[i % 3], match.version, action.version,
                         FLAG_VERSION.get(flags, V10))
        importance = f"importance={i % 1000}," if version == V15 and i % 4 == 0 else ""
        i += 1
        key = (table, priority, match.text)
        if key in seen:
            continue
        seen.add(key)
        body = f"{cookie}table={table},priority={priority},{flags}{timeouts}{importance}"
        body += f"{match.text},actions={action.text}" if match.text else (
            f"actions={action.text}")
        out.append((version, body))
    return out + EXTRA


def install(sb: Sandbox, bridge: str = BRIDGE) -> None:
    """A bridge of dummy ports with the corpus: TLV map, meters, groups, then rules added
    over each protocol (the bridge allows OpenFlow 1.0 to 1.5)."""
    sb.vsctl("add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=dummy",
             "protocols=OpenFlow10,OpenFlow11,OpenFlow12,OpenFlow13,OpenFlow14,OpenFlow15")
    for n in range(1, PORTS + 1):
        port = f"{bridge}p{n}"
        sb.vsctl("add-port", bridge, port, "--", "set", "interface", port, "type=dummy",
                 f"ofport_request={n}")
    sb.ofctl(bridge, "add-tlv-map", TLV_MAP)
    for meter in METERS:
        sb.ofctl(bridge, "add-meter", meter, version=V13)
    sb.ofctl(bridge, "add-groups", "-", input_text="\n".join(GROUPS) + "\n", version=V15)
    sb.ofctl(bridge, "del-flows")
    for version in (V10, V13, V15):
        text = "\n".join(r for v, r in rules() if v == version) + "\n"
        sb.ofctl(bridge, "add-flows", "-", input_text=text, version=version)


def _clean(text: str) -> list[str]:
    text = re.sub(r" \(xid=0x[0-9a-f]+\)", "", text)
    return [line for line in text.splitlines() if line.strip()]


def raw_flows(sb: Sandbox, bridge: str = BRIDGE, version: str = V15) -> list[str]:
    """``dump-flows --no-stats`` (no counters, durations or ages), sorted."""
    return sorted(_clean(sb.ofctl(bridge, "dump-flows", version=version,
                                  options=("--no-stats", "--no-names"))))


def raw_groups(sb: Sandbox, bridge: str = BRIDGE) -> list[str]:
    """``dump-groups`` over OpenFlow 1.5 (every property shown), sorted."""
    return sorted(_clean(sb.ofctl(bridge, "dump-groups", version=V15)))


def raw_meters(sb: Sandbox, bridge: str = BRIDGE) -> list[str]:
    """``dump-meters``, one entry per meter (its line and its bands' lines), sorted."""
    blocks: list[str] = []
    for line in _clean(sb.ofctl(bridge, "dump-meters", version=V13))[1:]:
        if line.startswith("meter=") or not blocks:
            blocks.append(line)
        else:
            blocks[-1] += " " + line.strip()
    return sorted(blocks)
