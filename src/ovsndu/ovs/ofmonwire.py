"""Following a bridge's OpenFlow changes as bytes: flow monitor and request forwarding (pure).

The final catch-up (docs/upgrade.md) follows each bridge of the old vswitchd on one
OpenFlow 1.5 connection: an ``OFPMP_FLOW_MONITOR`` request (every table, additions,
removals and modifications with their instructions, no initial dump) and an
``OFPT_SET_ASYNC`` asking for ``OFPT_REQUESTFORWARD`` of the group and meter mods other
connections make (Open vSwitch forwards those once they succeeded).  This module
encodes the two requests and turns what arrives into the shapes the readers already
know: a flow update becomes a flow-desc entry, a forwarded group mod a group-desc
entry, a forwarded meter mod an OpenFlow 1.3 meter-config entry.

Layouts (OpenFlow 1.5.1 §7.3.5.19, §7.4.4, §7.3.4.4/§7.3.4.5)::

    flow monitor request: monitor_id, out_port, out_group, flags(2), table_id, command
                          | match
    flow update (full):   length, event, table_id, reason, idle, hard, priority, pad4,
                          cookie | match (padded to 8) | instructions
    group mod (1.5):      command, type, pad, group_id, buckets_len, pad2,
                          command_bucket_id | buckets | properties
    meter mod:            command, flags, meter_id | bands
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ovsndu.errors import ParseError

HEADER = struct.Struct("!BBHI")
OF13, OF15 = 4, 6
MULTIPART_REQUEST, MULTIPART_REPLY = 18, 19
SET_ASYNC, REQUESTFORWARD = 28, 32
GROUP_MOD, METER_MOD = 15, 29
OFPMP_FLOW_MONITOR, OFPMP_GROUP_DESC, OFPMP_METER_CONFIG = 16, 7, 10
# Flow monitor flags and events (OpenFlow 1.4+).
FMF_ADD, FMF_REMOVED, FMF_MODIFY, FMF_INSTRUCTIONS = 2, 4, 8, 16
EVENTS = {0: "initial", 1: "added", 2: "removed", 3: "modified", 4: "abbrev",
          5: "paused", 6: "resumed"}
# Async config properties: request forwarding, for a slave and for a master/equal role.
ACPT_REQUESTFORWARD_SLAVE, ACPT_REQUESTFORWARD_MASTER = 10, 11
RFR_GROUP_MOD, RFR_METER_MOD = 0, 1
GROUP_COMMANDS = {0: "add", 1: "modify", 2: "delete", 3: "insert_bucket",
                  5: "remove_bucket", 0x8000: "add_or_mod"}
METER_COMMANDS = {0: "add", 1: "modify", 2: "delete"}
OFPG_ALL, OFPM_ALL = 0xFFFFFFFC, 0xFFFFFFFF
ANY32 = 0xFFFFFFFF

_UPDATE = struct.Struct("!HHBBHHH4xQ")       # 24 bytes before the match
_DESC15 = struct.Struct("!H2xBxHHHHHQ")      # ofdump's flow-desc entry head
_GMOD15 = struct.Struct("!HBxIH2xI")
_GDESC15 = struct.Struct("!HBxIH6x")
_MMOD = struct.Struct("!HHI")
# The stats of a rule named by an event: duration, idle time, packets and bytes all 0
# (OXS class 0x8002, 8-byte fields 0, 1, 4 and 5), so that OVS prints it as dump-flows does.
_STATS = struct.pack("!HH", 0, 4 + 4 * 12) + b"".join(
    struct.pack("!HBBQ", 0x8002, field << 1, 8, 0) for field in (0, 1, 4, 5)) + bytes(4)


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def monitor_request(xid: int, monitor_id: int = 1) -> bytes:
    """Follow every rule of every table: added, removed, modified, with instructions."""
    flags = FMF_ADD | FMF_REMOVED | FMF_MODIFY | FMF_INSTRUCTIONS
    body = (struct.pack("!HH4x", OFPMP_FLOW_MONITOR, 0)
            + struct.pack("!IIIHBB", monitor_id, ANY32, ANY32, flags, 0xFF, 0)
            + struct.pack("!HH4x", 1, 4))               # an empty OXM match
    return HEADER.pack(OF15, MULTIPART_REQUEST, HEADER.size + len(body), xid) + body


def forward_request(xid: int) -> bytes:
    """``OFPT_SET_ASYNC``: forward the group and meter mods of other connections to us
    (whatever our role); the other asynchronous messages keep their settings."""
    mask = (1 << RFR_GROUP_MOD) | (1 << RFR_METER_MOD)
    body = b"".join(struct.pack("!HHI", prop, 8, mask)
                    for prop in (ACPT_REQUESTFORWARD_SLAVE, ACPT_REQUESTFORWARD_MASTER))
    return HEADER.pack(OF15, SET_ASYNC, HEADER.size + len(body), xid) + body


@dataclass(frozen=True, slots=True)
class FlowUpdate:
    """One flow monitor event; *entry* is a flow-desc entry (flags 0, no stats) for the
    rule it names, empty for ``paused``/``resumed``/``abbrev``."""

    event: str
    entry: bytes = b""


def flow_updates(reply: bytes) -> Iterator[FlowUpdate]:
    """The events of one OpenFlow 1.5 ``OFPMP_FLOW_MONITOR`` reply."""
    if reply[0] != OF15 or reply[1] != MULTIPART_REPLY or \
            struct.unpack_from("!H", reply, 8)[0] != OFPMP_FLOW_MONITOR:
        raise ParseError("flow monitor", reply[:16].hex(), "not an OF1.5 flow monitor reply")
    off = 16
    while off < len(reply):
        if off + 4 > len(reply):
            raise ParseError("flow monitor", reply[off:].hex(), "truncated update")
        length, code = struct.unpack_from("!HH", reply, off)
        if length < 8 or off + length > len(reply):
            raise ParseError("flow monitor", reply[off:off + 32].hex(), "bad update length")
        event = EVENTS.get(code)
        if event is None:
            raise ParseError("flow monitor", reply[off:off + 32].hex(), f"unknown event {code}")
        update = reply[off:off + length]
        off += length
        if event in ("paused", "resumed", "abbrev"):
            yield FlowUpdate(event)
            continue
        if length < _UPDATE.size + 8:
            raise ParseError("flow monitor", update.hex(), "update shorter than its match")
        _len, _ev, table, _reason, idle, hard, priority, cookie = _UPDATE.unpack_from(update)
        match_len = struct.unpack_from("!H", update, _UPDATE.size + 2)[0]
        match = update[_UPDATE.size:_UPDATE.size + _pad8(match_len)]
        instructions = update[_UPDATE.size + _pad8(match_len):]
        body = match + _STATS + instructions
        head = _DESC15.pack(_DESC15.size + len(body), table, priority, idle, hard, 0, 0, cookie)
        yield FlowUpdate(event, head + body)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A forwarded group or meter mod: its command, the id it names and, for a command
    that gives the whole entry (add, modify), the entry as the readers decode it (an
    OpenFlow 1.5 group-desc entry, an OpenFlow 1.3 meter-config entry)."""

    category: str        # "groups" or "meters"
    command: str
    ident: int
    entry: bytes = b""


def forwarded(msg: bytes) -> Forwarded:
    """Decode one ``OFPT_REQUESTFORWARD`` message."""
    if msg[1] != REQUESTFORWARD or len(msg) < HEADER.size * 2:
        raise ParseError("request forward", msg[:16].hex(), "not a request forward")
    inner = msg[HEADER.size:]
    version, kind, length, _xid = HEADER.unpack_from(inner)
    if length != len(inner):
        raise ParseError("request forward", msg[:32].hex(), "inner length mismatch")
    if kind == GROUP_MOD and version == OF15:
        command, gtype, group_id, buckets_len, _bucket = _GMOD15.unpack_from(inner, HEADER.size)
        name = GROUP_COMMANDS.get(command)
        if name is None:
            raise ParseError("group mod", inner[:24].hex(), f"unknown command {command}")
        rest = inner[HEADER.size + _GMOD15.size:]
        entry = (_GDESC15.pack(_GDESC15.size + len(rest), gtype, group_id, buckets_len) + rest
                 if name in ("add", "modify", "add_or_mod") else b"")
        return Forwarded("groups", name, group_id, entry)
    if kind == METER_MOD and version >= OF13:
        command, flags, meter_id = _MMOD.unpack_from(inner, HEADER.size)
        name = METER_COMMANDS.get(command)
        if name is None:
            raise ParseError("meter mod", inner[:24].hex(), f"unknown command {command}")
        bands = inner[HEADER.size + _MMOD.size:]
        entry = (struct.pack("!HHI", 8 + len(bands), flags, meter_id) + bands
                 if name != "delete" else b"")
        return Forwarded("meters", name, meter_id, entry)
    raise ParseError("request forward", inner[:16].hex(),
                     f"unexpected forwarded message type {kind} (OF version {version})")


def group_desc_reply(entries: list[bytes], xid: int = 1) -> bytes:
    """An OpenFlow 1.5 group-desc reply holding *entries* (for OVS's printer)."""
    body = struct.pack("!HH4x", OFPMP_GROUP_DESC, 0) + b"".join(entries)
    return HEADER.pack(OF15, MULTIPART_REPLY, HEADER.size + len(body), xid) + body


def meter_config_replies(entries: list[bytes]) -> list[bytes]:
    """One OpenFlow 1.3 meter-config reply per entry (as ``dump-meters`` reads them)."""
    out = []
    for xid, entry in enumerate(entries):
        body = struct.pack("!HH4x", OFPMP_METER_CONFIG, 0) + entry
        out.append(HEADER.pack(OF13, MULTIPART_REPLY, HEADER.size + len(body), xid) + body)
    return out


def flow_desc_prefix(xid: int = 0) -> bytes:
    """The header and multipart header of an OpenFlow 1.5 flow-desc reply (ofdump pairs
    each entry with what OVS prints for it in such a reply)."""
    return HEADER.pack(OF15, MULTIPART_REPLY, 16, xid) + struct.pack("!HH4x", 1, 0)
