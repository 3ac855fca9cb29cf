"""Parsers for vswitchd's unixctl dumps (pure: text in, entries out).

The datapath-side state: ``tnl/neigh/show``, ``ovs/route/show``, ``fdb/show``,
``dpctl/dump-conntrack -m -s`` (with the NAT derived from the two tuples),
``dpctl/ct-stats-show`` and ``dpif/show``.  As in :mod:`ovsndu.ovs.parsers` (the
OpenFlow dumps), each parser raises :class:`ParseError` naming the dump and the
offending line; it never guesses and never drops.
"""

from __future__ import annotations

import re

from ovsndu.errors import ParseError
from ovsndu.model import Conntrack, FdbEntry, Route, TunnelNeighbor

_NEIGH_HEADER = re.compile(r"^IP\s+MAC\s+Bridge\s*$|^=+$")


def parse_tnl_neigh(text: str) -> list[TunnelNeighbor]:
    """``tnl/neigh/show`` output → neighbours."""
    out = []
    for line in text.splitlines():
        if not line.strip() or _NEIGH_HEADER.match(line.strip()):
            continue
        words = line.split()
        if len(words) != 3 or not re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", words[1]):
            raise ParseError("tunnel neighbour", line, "expected IP MAC BRIDGE")
        out.append(TunnelNeighbor(bridge=words[2], ip=words[0], mac=words[1]))
    return out


def parse_routes(text: str) -> list[Route]:
    """``ovs/route/show`` output → routes, ``User:`` as ``user``, ``Cached:`` as ``cached``."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.strip() == "Route Table:":
            continue
        kind, sep, rest = line.partition(": ")
        if not sep or kind not in ("User", "Cached"):
            raise ParseError("route", line, "neither a User: nor a Cached: route")
        words = rest.split()
        if not words:
            raise ParseError("route", line, "no prefix")
        prefix, opts, local = words[0], {}, False
        i = 1
        while i < len(words):
            word = words[i]
            if word == "local":
                local = True
                i += 1
            elif word in ("dev", "GW", "SRC", "MARK") and i + 1 < len(words):
                opts[word] = words[i + 1]
                i += 2
            else:
                raise ParseError("route", line, f"unknown word {word!r}")
        if "dev" not in opts:
            raise ParseError("route", line, "no dev")
        try:
            mark = int(opts.get("MARK", "0"))
        except ValueError:
            raise ParseError("route", line, "bad MARK") from None
        out.append(Route(
            kind=kind.lower(), prefix=prefix, dev=opts["dev"], gateway=opts.get("GW"),
            pkt_mark=mark, local=local, src=opts.get("SRC"),
        ))
    return out


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def parse_fdb(bridge: str, text: str) -> list[FdbEntry]:
    """``fdb/show BR`` output → entries; ``static`` in the Age column marks static ones."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words == ["port", "VLAN", "MAC", "Age"]:
            continue
        if len(words) != 4 or not _MAC.match(words[2]):
            raise ParseError("fdb", line, "expected PORT VLAN MAC AGE")
        port, vlan, mac, age = words
        static = age == "static"
        try:
            out.append(FdbEntry(bridge=bridge, port=port, vlan=int(vlan), mac=mac,
                                static=static, age=None if static else int(age)))
        except ValueError:
            raise ParseError("fdb", line, "bad VLAN or age") from None
    return out


_KV_RE = re.compile(r"([a-z_]+)=(\([^)]*\)|[^,]*)")


def _kv(text: str) -> dict[str, str]:
    """``k=v,k=(a,b),...`` → dict (one level of parentheses, as OVS prints)."""
    return dict(_KV_RE.findall(text))


# Protocols ct_dpif prints by name; any other is printed as its number.
CT_PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "dccp": 33, "icmpv6": 58,
                "sctp": 132, "udplite": 136}

# One entry of ct_dpif_format_entry (lib/ct-dpif.c), its fields in the order printed.
_CT_TUPLE = r"src=[0-9a-fA-F.:]+,dst=[0-9a-fA-F.:]+(?:,(?:sport|dport|id|type|code)=\d+)*"
_CT_COUNTERS = r"(?:,packets=\d+,bytes=\d+)?"
_CT_LINE = re.compile(
    r"(?P<proto>[a-z][a-z0-9]*|\d{1,3})"
    rf",orig=\((?P<orig>{_CT_TUPLE}){_CT_COUNTERS}\)"
    rf",reply=\((?P<reply>{_CT_TUPLE}){_CT_COUNTERS}\)"
    r"(?:,start=[-0-9T:.]+)?(?:,stop=[-0-9T:.]+)?"
    r"(?:,id=\d+)?(?:,zone=(?P<zone>\d+))?(?:,status=[A-Za-z_|0-9]*)?"
    r"(?:,timeout=(?P<timeout>\d+))?(?:,mark=(?P<mark>\d+))?"
    r"(?:,labels=(?P<labels>0x[0-9a-f]+))?"
    r"(?:,protoinfo=\((?:state=(?P<state>[A-Z_0-9\[\]]+)"
    r"|state_orig=(?P<so>[A-Z_0-9\[\]]+),state_reply=(?P<sr>[A-Z_0-9\[\]]+)"
    r"(?:,wscale_orig=(?P<wo>\d+),wscale_reply=(?P<wr>\d+))?"
    r"(?:,flags_orig=(?P<fo>[A-Za-z_|0-9]*))?(?:,flags_reply=(?P<fr>[A-Za-z_|0-9]*))?)"
    r"(?:,vtag_orig=\d+,vtag_reply=\d+)?\))?"
    r"(?:,helper=(?P<helper>[a-z0-9_-]+))?"
    rf"(?:,parent=\((?P<parent>{_CT_TUPLE})\))?"
)


_CT_GROUPS = ("proto", "orig", "reply", "zone", "mark", "labels", "state", "so", "sr", "wo",
              "wr", "fo", "fr", "helper", "parent", "timeout")


def parse_conntrack(text: str) -> list[Conntrack]:
    """``dpctl/dump-conntrack -m -s`` output → entries (NAT derived from the tuples).

    Every line must be one whole entry as ``ct_dpif_format_entry`` prints it; packet
    and byte counters (volatile) are left out of the tuples.
    """
    out = []
    fullmatch, groups = _CT_LINE.fullmatch, _CT_GROUPS
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        m = fullmatch(stripped)
        if m is None:
            raise ParseError("conntrack", line, "not an entry as dump-conntrack -m -s prints")
        # One call for every group (100k lines: a tenth of the parse, as subscripts).
        (proto, orig, reply, zone, mark, labels, state, so, sr, wo, wr, fo, fr, helper,
         parent, timeout) = m.group(*groups)
        if proto not in CT_PROTOCOLS and not (proto.isdigit() and int(proto) < 256):
            raise ParseError("conntrack", line, f"unknown protocol {proto!r}")
        out.append(Conntrack(
            protocol=proto, orig=orig, reply=reply, zone=int(zone or 0),
            mark=int(mark or 0), labels=labels or "0x0",
            state_orig=so or state, state_reply=sr,
            nat=derive_nat(orig, reply), helper=helper or "", parent=parent or "",
            tcp_flags_orig="" if fo in (None, "0") else fo,
            tcp_flags_reply="" if fr in (None, "0") else fr,
            wscale_orig=int(wo or 0), wscale_reply=int(wr or 0),
            timeout=int(timeout) if timeout is not None else None,
        ))
    return out


def parse_ct_stats_total(text: str) -> int:
    """``dpctl/ct-stats-show`` output → its ``Total:`` connection count."""
    m = re.search(r"^\s*Total:\s*(\d+)\s*$", text, re.M)
    if m is None:
        raise ParseError("conntrack stats", text.strip()[:200], "no 'Total: N' line")
    return int(m.group(1))


def derive_nat(orig: str, reply: str) -> str:
    """NAT that turns *orig* into *reply*: ``src=IP[:PORT]``, ``dst=...``, both, or ``""``."""
    # The common case, no NAT: the reply is the original reversed (half the parse time).
    parts = orig.split(",")
    if len(parts) == 4 and parts[2][:6] == "sport=" and parts[3][:6] == "dport=":
        if reply == (f"src={parts[1][4:]},dst={parts[0][4:]},"
                     f"sport={parts[3][6:]},dport={parts[2][6:]}"):
            return ""
        back = reply.split(",")
        if (len(back) == 4 and parts[0][:4] == "src=" and parts[1][:4] == "dst="
                and back[0][:4] == "src=" and back[1][:4] == "dst="
                and back[2][:6] == "sport=" and back[3][:6] == "dport="):
            # NAT with ports (SNAT/DNAT of UDP, TCP): as _derived_nat, without its dicts.
            out = []
            if back[1][4:] != parts[0][4:] or back[3][6:] != parts[2][6:]:
                out.append("src=" + _addr(back[1][4:], back[3][6:]))
            if back[0][4:] != parts[1][4:] or back[2][6:] != parts[3][6:]:
                out.append("dst=" + _addr(back[0][4:], back[2][6:]))
            return ",".join(out)
    # Without ports (ICMP: id, type, code): no NAT when the reply's addresses are the
    # original's reversed (the tuples print src first, then dst).
    elif len(parts) >= 2 and "port=" not in orig:
        back = reply.split(",", 2)
        if (len(back) >= 2 and parts[0][:4] == "src=" and parts[1][:4] == "dst="
                and back[0] == "src=" + parts[1][4:] and back[1] == "dst=" + parts[0][4:]):
            return ""
    return _derived_nat(orig, reply)


def _derived_nat(orig: str, reply: str) -> str:
    """:func:`derive_nat` field by field (every case)."""
    o, r = _tuple_fields(orig), _tuple_fields(reply)
    port_keys = ("sport", "dport") if "sport" in o else (None, None)
    out = []
    if r.get("dst") != o.get("src") or (port_keys[0] and r.get("dport") != o.get("sport")):
        out.append("src=" + _addr(r.get("dst", ""), r.get("dport") if port_keys[0] else None))
    if r.get("src") != o.get("dst") or (port_keys[0] and r.get("sport") != o.get("dport")):
        out.append("dst=" + _addr(r.get("src", ""), r.get("sport") if port_keys[0] else None))
    return ",".join(out)


def _tuple_fields(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(","))


def _addr(ip: str, port: str | None) -> str:
    if ":" in ip:
        ip = f"[{ip}]"
    return f"{ip}:{port}" if port else ip


_DPIF_DP = re.compile(r"^\S+@\S+: hit:\d+ missed:\d+$")


def parse_dpif_ports(text: str) -> dict[tuple[str, str], int]:
    """``dpif/show`` output → {(bridge, interface): datapath port number}."""
    out: dict[tuple[str, str], int] = {}
    bridge = None
    for line in text.splitlines():
        if not line.strip() or _DPIF_DP.match(line):
            continue
        m = re.match(r"^  (\S+):$", line)
        if m:
            bridge = m.group(1)
            continue
        m = re.match(r"^    (\S+) (\d+|LOCAL|\S+)/(\d+|none)(?:: .*)?$", line)
        if m and bridge is not None:
            if m.group(3) != "none":
                out[(bridge, m.group(1))] = int(m.group(3))
            continue
        raise ParseError("dpif/show", line, "neither a datapath, a bridge nor a port")
    return out
