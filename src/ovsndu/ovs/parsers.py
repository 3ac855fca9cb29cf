"""Parsers from OVS 3.1 dump text to model entries (pure: text in, entries out).

Each parser raises :class:`ParseError` naming the dump and the offending line; it
never guesses.  Formats are those of ``ovs-ofctl -O OpenFlow15 --no-names``,
``ovs-ofctl -O OpenFlow13 dump-meters``, ``dump-tlv-map`` and the unixctl
commands ``tnl/neigh/show``, ``ovs/route/show``, ``dpctl/dump-conntrack -m -s``,
``fdb/show`` and ``dpif/show``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ovsndu.errors import ParseError
from ovsndu.model import Conntrack, FdbEntry, Flow, Group, Meter, Route, TlvMapping, TunnelNeighbor

_FLOW_INTS = {"table", "priority", "idle_timeout", "hard_timeout", "importance",
              "n_packets", "n_bytes", "idle_age", "hard_age"}
_FLOW_FLAGS = {"send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts",
               "no_byte_counts"}


def _reply_lines(text: str) -> Iterator[str]:
    """Lines of an ovs-ofctl reply without the ``OFPST_... reply`` headers."""
    for line in text.splitlines():
        if line.strip() and not re.match(r"^\S+ reply \(", line) and "(xid=" not in line:
            yield line


# The order ofputil prints a flow's fields in; anything else goes to the general parser.
_FLOW_RE = re.compile(
    r"^\s*(?:cookie=(0x[0-9a-f]+), )?(?:duration=([0-9.]+)s, )?(?:table=(\d+), )?"
    r"(?:n_packets=(\d+), )?(?:n_bytes=(\d+), )?(?:idle_timeout=(\d+), )?"
    r"(?:hard_timeout=(\d+), )?((?:(?:send_flow_rem|check_overlap|reset_counts"
    r"|no_packet_counts|no_byte_counts) )*)(?:importance=(\d+), )?(?:idle_age=(\d+), )?"
    r"(?:hard_age=(\d+), )?(?:priority=(\d+))?,?(\S*) actions=(.*)$"
)


def parse_flows(bridge: str, text: str) -> list[Flow]:
    """``dump-flows`` output (with or without stats) → flows."""
    out = []
    for line in text.splitlines():
        m = _FLOW_RE.match(line)
        if m is None:
            if not line.strip() or " reply (" in line:
                continue
            out.append(_parse_flow(bridge, line))
            continue
        (cookie, duration, table, n_packets, n_bytes, idle, hard, flags, importance, idle_age,
         hard_age, priority, match, actions) = m.groups()
        out.append(Flow(
            bridge=bridge, table=int(table or 0), cookie=cookie or "0x0",
            priority=int(priority) if priority else 32768, match=match, actions=actions,
            idle_timeout=int(idle or 0), hard_timeout=int(hard or 0),
            flags=tuple(sorted(flags.split())), importance=int(importance or 0),
            duration=float(duration) if duration else None,
            n_packets=int(n_packets) if n_packets else None,
            n_bytes=int(n_bytes) if n_bytes else None,
            idle_age=int(idle_age) if idle_age else None,
            hard_age=int(hard_age) if hard_age else None,
        ))
    return out


def _parse_flow(bridge: str, line: str) -> Flow:
    head, sep, actions = line.strip().partition(" actions=")
    if not sep:
        raise ParseError("flow", line, "no actions")
    fields: dict[str, str] = {}
    flags: list[str] = []
    words = [w for token in head.split(", ") for w in token.split(" ") if w]
    if not words:
        raise ParseError("flow", line, "empty match")
    *prefix, last = words
    for word in prefix:
        key, eq, value = word.partition("=")
        if eq:
            fields[key] = value
        elif word in _FLOW_FLAGS:
            flags.append(word)
        else:
            raise ParseError("flow", line, f"unknown word {word!r}")
    match = last
    m = re.match(r"^priority=(\d+)(?:,|$)", last)
    if m:
        fields["priority"] = m.group(1)
        match = last[m.end():]
    elif last in _FLOW_FLAGS:
        flags.append(last)
        match = ""
    elif "=" in last and last.split("=", 1)[0] in _FLOW_INTS | {"cookie", "duration"}:
        key, _, value = last.partition("=")
        fields[key] = value
        match = ""
    try:
        ints = {k: int(v) for k, v in fields.items() if k in _FLOW_INTS}
        duration = float(fields["duration"].rstrip("s")) if "duration" in fields else None
    except ValueError as exc:
        raise ParseError("flow", line, str(exc)) from None
    unknown = set(fields) - _FLOW_INTS - {"cookie", "duration"}
    if unknown:
        raise ParseError("flow", line, f"unknown fields {sorted(unknown)}")
    return Flow(
        bridge=bridge,
        table=ints.get("table", 0),
        cookie=fields.get("cookie", "0x0"),
        priority=ints.get("priority", 32768),
        match=match,
        actions=actions,
        idle_timeout=ints.get("idle_timeout", 0),
        hard_timeout=ints.get("hard_timeout", 0),
        flags=tuple(sorted(flags)),
        importance=ints.get("importance", 0),
        duration=duration,
        n_packets=ints.get("n_packets"),
        n_bytes=ints.get("n_bytes"),
        idle_age=ints.get("idle_age"),
        hard_age=ints.get("hard_age"),
    )


def parse_groups(bridge: str, text: str) -> list[Group]:
    """``-O OpenFlow15 dump-groups`` output → groups."""
    groups = []
    for line in _reply_lines(text):
        head, *buckets = line.strip().split(",bucket=")
        m = re.match(r"^group_id=(\d+),type=([a-z_]+)(?:,(.*))?$", head)
        if not m:
            raise ParseError("group", line, "expected group_id=N,type=T")
        properties = m.group(3) or ""
        sm = re.search(r"(?:^|,)selection_method=([^,]+)", properties)
        groups.append(Group(
            bridge=bridge, group_id=int(m.group(1)), type=m.group(2),
            selection_method=sm.group(1) if sm else None,
            properties=properties, buckets=tuple(buckets),
        ))
    return groups


def parse_meters(bridge: str, text: str) -> list[Meter]:
    """``-O OpenFlow13 dump-meters`` output (a meter spans several lines) → meters."""
    meters: list[Meter] = []
    current: tuple[int, tuple[str, ...]] | None = None
    bands: list[str] = []

    def flush() -> None:
        if current is not None:
            meters.append(Meter(bridge=bridge, meter_id=current[0], flags=current[1],
                                bands=tuple(bands)))

    for line in _reply_lines(text):
        words = line.split()
        if words[0].startswith("meter="):
            flush()
            bands = []
            if words[-1] != "bands=":
                raise ParseError("meter", line, "expected 'bands=' at the end")
            try:
                current = (int(words[0][6:]), tuple(words[1:-1]))
            except ValueError:
                raise ParseError("meter", line, "bad meter id") from None
        elif words[0].startswith("type=") and current is not None:
            bands.append(" ".join(words))
        else:
            raise ParseError("meter", line, "unexpected line")
    flush()
    return meters


def parse_tlv_map(bridge: str, text: str) -> list[TlvMapping]:
    """``dump-tlv-map`` output → mappings (rows of its mapping table)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\d+)\s+tun_metadata(\d+)\s*$", line)
        if m:
            out.append(TlvMapping(bridge=bridge, tlv_class=m.group(1), tlv_type=int(m.group(2), 16),
                                  length=int(m.group(3)), index=int(m.group(4))))
    return out


def parse_tnl_neigh(text: str) -> list[TunnelNeighbor]:
    """``tnl/neigh/show`` output → neighbours."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] == "IP" or set(line.strip()) == {"="}:
            continue
        if not re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", words[1]):
            raise ParseError("tunnel neighbour", line, "expected IP MAC BRIDGE")
        out.append(TunnelNeighbor(bridge=words[2], ip=words[0], mac=words[1]))
    return out


def parse_routes(text: str) -> list[Route]:
    """``ovs/route/show`` output → routes, ``User:`` as ``user``, ``Cached:`` as ``cached``."""
    out = []
    for line in text.splitlines():
        kind, sep, rest = line.partition(": ")
        if not sep or kind not in ("User", "Cached"):
            continue
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
        out.append(Route(
            kind=kind.lower(), prefix=prefix, dev=opts["dev"], gateway=opts.get("GW"),
            pkt_mark=int(opts.get("MARK", "0")), local=local, src=opts.get("SRC"),
        ))
    return out


def parse_fdb(bridge: str, text: str) -> list[FdbEntry]:
    """``fdb/show BR`` output → entries; ``static`` in the Age column marks static ones."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] == "port":
            continue
        if len(words) != 4:
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


def parse_conntrack(text: str) -> list[Conntrack]:
    """``dpctl/dump-conntrack -m -s`` output → entries (NAT derived from the tuples)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        proto, _, rest = line.strip().partition(",")
        f = _kv(rest)
        if "orig" not in f or "reply" not in f:
            raise ParseError("conntrack", line, "no orig/reply tuple")
        orig, reply = f["orig"][1:-1], f["reply"][1:-1]
        proto_info = _kv(f["protoinfo"][1:-1]) if "protoinfo" in f else {}
        try:
            out.append(Conntrack(
                protocol=proto, orig=orig, reply=reply, zone=int(f.get("zone", "0")),
                mark=int(f.get("mark", "0")), labels=f.get("labels", "0x0"),
                state_orig=proto_info.get("state_orig") or proto_info.get("state"),
                state_reply=proto_info.get("state_reply"),
                nat=derive_nat(orig, reply),
                timeout=int(f["timeout"]) if "timeout" in f else None,
            ))
        except ValueError:
            raise ParseError("conntrack", line, "bad number") from None
    return out


def derive_nat(orig: str, reply: str) -> str:
    """NAT that turns *orig* into *reply*: ``src=IP[:PORT]``, ``dst=...``, both, or ``""``."""
    o, r = _kv(orig), _kv(reply)
    port_keys = ("sport", "dport") if "sport" in o else (None, None)
    out = []
    if r.get("dst") != o.get("src") or (port_keys[0] and r.get("dport") != o.get("sport")):
        out.append("src=" + _addr(r.get("dst", ""), r.get("dport") if port_keys[0] else None))
    if r.get("src") != o.get("dst") or (port_keys[0] and r.get("sport") != o.get("dport")):
        out.append("dst=" + _addr(r.get("src", ""), r.get("sport") if port_keys[0] else None))
    return ",".join(out)


def _addr(ip: str, port: str | None) -> str:
    if ":" in ip:
        ip = f"[{ip}]"
    return f"{ip}:{port}" if port else ip


def parse_dpif_ports(text: str) -> dict[tuple[str, str], int]:
    """``dpif/show`` output → {(bridge, interface): datapath port number}."""
    out: dict[tuple[str, str], int] = {}
    bridge = None
    for line in text.splitlines():
        m = re.match(r"^  (\S+):$", line)
        if m:
            bridge = m.group(1)
            continue
        m = re.match(r"^    (\S+) (\S+)/(\d+|none)", line)
        if m and bridge is not None and m.group(3) != "none":
            out[(bridge, m.group(1))] = int(m.group(3))
    return out
