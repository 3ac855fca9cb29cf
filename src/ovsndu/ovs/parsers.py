"""Parsers from OVS 3.1 dump text to model entries (pure: text in, entries out).

Each parser raises :class:`ParseError` naming the dump and the offending line; it
never guesses and never drops: every line is an entry or a recognised header.
Where OVS prints a second count (the TLV table's allocated space,
``dpctl/ct-stats-show``, ``dump-aggregate``), a ``check_*`` function compares.
Formats are those of ``ovs-ofctl -O OpenFlow15 --no-names``,
``ovs-ofctl -O OpenFlow13 dump-meters`` and ``dump-tlv-map``; the unixctl dumps
(neighbours, routes, FDB, conntrack, datapath ports) are
:mod:`ovsndu.ovs.appctl_parsers`'.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ovsndu.errors import ParseError
from ovsndu.model import Flow, Group, Meter, TlvMapping
from ovsndu.model.state import METER_ID_NAMES

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
    r"(?:hard_age=(\d+), )?(?:priority=(\d+))?,?(\S*?) ?(?<=[ ,])actions=(.*)$"
)


def parse_aggregate_count(text: str) -> int:
    """``dump-aggregate`` output → its ``flow_count``."""
    m = re.search(r"\bflow_count=(\d+)", text)
    if m is None:
        raise ParseError("aggregate", text.strip()[:200], "no flow_count")
    return int(m.group(1))


def parse_flows(bridge: str, text: str) -> list[Flow]:
    """``dump-flows`` output (with or without stats) → flows."""
    out = []
    for line in text.splitlines():
        if (not line.strip() or " reply (" in line) and _FLOW_RE.match(line) is None:
            continue
        out.append(flow_of_line(bridge, line))
    return out


def flow_of_line(bridge: str, line: str, wire: str = "") -> Flow:
    """One rule as ``dump-flows`` prints it → a flow (carrying *wire*, its flow-mod)."""
    m = _FLOW_RE.match(line)
    if m is None:
        return _parse_flow(bridge, line, wire)
    (cookie, duration, table, n_packets, n_bytes, idle, hard, flags, importance, idle_age,
     hard_age, priority, match, actions) = m.groups()
    return Flow(
        bridge=bridge, table=int(table or 0), cookie=cookie or "0x0",
        priority=int(priority) if priority else 32768, match=match, actions=actions,
        idle_timeout=int(idle or 0), hard_timeout=int(hard or 0),
        flags=tuple(sorted(flags.split())), importance=int(importance or 0),
        duration=float(duration) if duration else None,
        n_packets=int(n_packets) if n_packets else None,
        n_bytes=int(n_bytes) if n_bytes else None,
        idle_age=int(idle_age) if idle_age else None,
        hard_age=int(hard_age) if hard_age else None,
        wire=wire,
    )


def _parse_flow(bridge: str, line: str, wire: str = "") -> Flow:
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
        wire=wire,
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


# OpenFlow's reserved meter ids (OFPM_SLOWPATH, OFPM_CONTROLLER): ovs-ofctl prints names.
METER_NAMES = {name: number for number, name in METER_ID_NAMES.items()}


def parse_meter_id(text: str) -> int:
    """``5``, ``slowpath`` or ``controller`` → the meter id (ValueError otherwise)."""
    if text in METER_NAMES:
        return METER_NAMES[text]
    if not text.isdigit() or not 0 < int(text) <= 0xFFFF0000:
        raise ValueError(f"bad meter id {text!r}")
    return int(text)


_METER_FLAGS = {"kbps", "pktps", "burst", "stats"}


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
            unknown = set(words[1:-1]) - _METER_FLAGS
            if unknown:
                raise ParseError("meter", line, f"unknown flags {sorted(unknown)}")
            try:
                current = (parse_meter_id(words[0][6:]), tuple(words[1:-1]))
            except ValueError:
                raise ParseError("meter", line, "bad meter id") from None
        elif words[0].startswith("type=") and current is not None:
            if not all(re.match(r"^[a-z_]+=\S+$", w) for w in words):
                raise ParseError("meter", line, "expected KEY=VALUE words")
            bands.append(" ".join(words))
        else:
            raise ParseError("meter", line, "unexpected line")
    flush()
    return meters


def parse_meter_features(text: str) -> tuple[frozenset[str], int]:
    """``meter-features`` output → (band types the datapath supports, max bands per meter)."""
    types = re.search(r"^band_types:(.*)$", text, re.M)
    max_bands = re.search(r"\bmax_bands:(\d+)", text)
    if types is None or max_bands is None:
        raise ParseError("meter features", text.strip(), "no band_types or max_bands")
    return frozenset(types.group(1).split()), int(max_bands.group(1))


def check_meters(bridge: str, meters: list[Meter], features: tuple[frozenset[str], int]
                 ) -> None:
    """Every band of every meter is of a type the datapath lists, and within max_bands."""
    band_types, max_bands = features
    for m in meters:
        if len(m.bands) > max_bands:
            raise ParseError("meter", m.spec(), f"{len(m.bands)} bands, the datapath allows "
                             f"{max_bands} ({bridge})")
        for band in m.bands:
            kind = band.split()[0].removeprefix("type=")
            if kind not in band_types:
                raise ParseError("meter", m.spec(), f"band type {kind} is not among the "
                                 f"datapath's {sorted(band_types)} ({bridge})")


_TLV_HEADERS = (
    re.compile(r"^NXT_TLV_TABLE_REPLY \(.*\):$"),
    re.compile(r"^ max option space=\d+ max fields=\d+$"),
    re.compile(r"^ allocated option space=\d+$"),
    re.compile(r"^ mapping table:$"),
    re.compile(r"^\s*class\s+type\s+length\s+match field\s*$"),
    re.compile(r"^\s*-+\s+-+\s+-+\s+-+\s*$"),
)
# class and type: OVS prints 0 as "0", anything else as 0x...
_TLV_ROW = re.compile(r"^\s*(0|0x[0-9a-f]+)\s+(0|0x[0-9a-f]+)\s+(\d+)\s+tun_metadata(\d+)\s*$")


def parse_tlv_map(bridge: str, text: str) -> list[TlvMapping]:
    """``dump-tlv-map`` output → mappings; the allocated option space must equal their
    lengths' sum."""
    out = []
    allocated = None
    for line in text.splitlines():
        m = _TLV_ROW.match(line)
        if m:
            out.append(TlvMapping(bridge=bridge, tlv_class=f"{int(m.group(1), 16):#x}",
                                  tlv_type=int(m.group(2), 16), length=int(m.group(3)),
                                  index=int(m.group(4))))
            continue
        if not line.strip():
            continue
        if not any(h.match(line) for h in _TLV_HEADERS):
            raise ParseError("TLV map", line, "neither a mapping nor a header")
        a = re.match(r"^ allocated option space=(\d+)$", line)
        if a:
            allocated = int(a.group(1))
    if allocated is not None and allocated != sum(t.length for t in out):
        raise ParseError("TLV map", text.strip().replace("\n", " | "),
                         f"allocated option space {allocated} but the {len(out)} mappings "
                         f"read sum to {sum(t.length for t in out)}")
    return out


def check_count(what: str, entries: int, other: int, source: str) -> None:
    """Entries parsed must equal the count OVS reports elsewhere."""
    if entries != other:
        raise ParseError(what, f"{source}: {other}", f"read {entries} entries, but {source} "
                         f"counts {other}")
