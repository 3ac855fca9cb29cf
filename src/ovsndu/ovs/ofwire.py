"""OpenFlow rules as bytes: flow-stats entries in, flow-mods out (pure: no I/O).

A rule read as text and parsed again can change meaning or be refused: Open vSwitch
prints some values its own parser rejects (``set_field:10/0xfffff->mpls_label``) and
a rule added over OpenFlow 1.0 may break 1.5's consistency rules.  So a rule is
carried as the switch described it: the match and the instructions of its OpenFlow
1.5 flow-stats entry, byte for byte, inside an OpenFlow 1.5 flow-mod.  A rule that
OpenFlow 1.5 cannot express (OVS's decoder says so) is carried as the Nicira
``NXT_FLOW_MOD`` built from its OpenFlow 1.0 ``NXST_FLOW`` entry, the protocol it was
added with.

Layouts (OpenFlow 1.5.1 §7.3.4.2 / §7.4.2 and Open vSwitch's ``nicira-ext.h``)::

    ofp15 flow desc: length, pad2, table_id, pad, priority, idle, hard, flags,
                     importance, cookie | match (padded to 8) | stats (padded) | instructions
    nx_flow_stats:   length, table_id, pad, duration_sec, duration_nsec, priority, idle,
                     hard, match_len, idle_age, hard_age, cookie, packets, bytes
                     | nx_match (padded to 8) | actions
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ovsndu.errors import ParseError

HEADER = struct.Struct("!BBHI")
OF10, OF15 = 1, 6
MULTIPART_REQUEST, MULTIPART_REPLY, FLOW_MOD, VENDOR = 18, 19, 14, 4
OF10_STATS_REQUEST, OF10_STATS_REPLY = 16, 17
NX_VENDOR = 0x2320
NXT_FLOW_MOD, NXT_FLOW_MOD_TABLE_ID = 13, 15
NXST_FLOW = 0
OFPMP_FLOW_DESC = 1
MORE = 1
NO_BUFFER, ANY32, ANY16 = 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFF
OFPFF_SEND_FLOW_REM = 1

_DESC15 = struct.Struct("!H2xBxHHHHHQ")          # 24 bytes before the match
_MOD15 = struct.Struct("!QQBBHHHIIIHH")           # after the header, before the match
_NXSTATS = struct.Struct("!HBxIIHHHHHHQQQ")       # 48 bytes before the match
_NXMOD = struct.Struct("!IIQHHHHIHHH6x")          # vendor, subtype, then nx_flow_mod


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def flow_desc_request(xid: int) -> bytes:
    """OpenFlow 1.5 request for every rule of every table."""
    body = (struct.pack("!HH4x", OFPMP_FLOW_DESC, 0)
            + struct.pack("!B3xII4xQQ", 0xFF, ANY32, ANY32, 0, 0)
            + struct.pack("!HH4x", 1, 4))            # an empty OXM match
    return HEADER.pack(OF15, MULTIPART_REQUEST, HEADER.size + len(body), xid) + body


def nx_flow_request(xid: int) -> bytes:
    """OpenFlow 1.0 Nicira ``NXST_FLOW`` request for every rule of every table."""
    body = struct.pack("!HHII4xHHB3x", 0xFFFF, 0, NX_VENDOR, NXST_FLOW, ANY16, 0, 0xFF)
    return HEADER.pack(OF10, OF10_STATS_REQUEST, HEADER.size + len(body), xid) + body


def flow_mod_table_id(xid: int) -> bytes:
    """``NXT_FLOW_MOD_TABLE_ID``: let OpenFlow 1.0 flow-mods name their table."""
    body = struct.pack("!IIB7x", NX_VENDOR, NXT_FLOW_MOD_TABLE_ID, 1)
    return HEADER.pack(OF10, VENDOR, HEADER.size + len(body), xid) + body


def more_follows(reply: bytes) -> bool:
    """Whether another part of a multipart (stats) reply follows this one."""
    return bool(struct.unpack_from("!H", reply, 10)[0] & MORE)


def _entries(reply: bytes, start: int, minimum: int) -> Iterator[bytes]:
    off = start
    while off < len(reply):
        if off + 2 > len(reply):
            raise ParseError("flow stats", reply[off:].hex(), "truncated entry")
        length = struct.unpack_from("!H", reply, off)[0]
        if length < minimum or off + length > len(reply):
            raise ParseError("flow stats", reply[off:off + 64].hex(), "bad entry length")
        yield reply[off:off + length]
        off += length


def desc_entries(reply: bytes) -> Iterator[bytes]:
    """The flow-desc entries of one OpenFlow 1.5 multipart reply."""
    if reply[0] != OF15 or reply[1] != MULTIPART_REPLY:
        raise ParseError("flow stats", reply[:16].hex(), "not an OpenFlow 1.5 multipart reply")
    return _entries(reply, 16, _DESC15.size + 8)


def nx_entries(reply: bytes) -> Iterator[bytes]:
    """The ``nx_flow_stats`` entries of one OpenFlow 1.0 NXST_FLOW reply."""
    if reply[0] != OF10 or reply[1] != OF10_STATS_REPLY:
        raise ParseError("flow stats", reply[:16].hex(), "not an OpenFlow 1.0 stats reply")
    return _entries(reply, 24, _NXSTATS.size)


def flow_mod15(entry: bytes, xid: int = 0) -> bytes:
    """The OpenFlow 1.5 ``OFPFC_ADD`` that installs the rule of a flow-desc *entry*."""
    _length, table, priority, idle, hard, flags, importance, cookie = _DESC15.unpack_from(entry)
    match_len = struct.unpack_from("!H", entry, _DESC15.size + 2)[0]
    stats_at = _DESC15.size + _pad8(match_len)
    stats_len = struct.unpack_from("!H", entry, stats_at + 2)[0]
    match = entry[_DESC15.size:stats_at]
    instructions = entry[stats_at + _pad8(stats_len):]
    body = _MOD15.pack(cookie, 0, table, 0, idle, hard, priority, NO_BUFFER, ANY32, ANY32,
                       flags, importance) + match + instructions
    return HEADER.pack(OF15, FLOW_MOD, HEADER.size + len(body), xid) + body


def nx_flow_mod(entry: bytes, xid: int = 0, *, send_flow_rem: bool = False) -> bytes:
    """The OpenFlow 1.0 ``NXT_FLOW_MOD`` (add) that installs the rule of an nx_flow_stats
    *entry*; its table goes in the command's high byte (``NXT_FLOW_MOD_TABLE_ID``).
    nx_flow_stats carries no flags: of OpenFlow 1.0's, only *send_flow_rem* is kept by a
    rule (reset_counts is implied by any 1.0 add)."""
    (_length, table, _sec, _nsec, priority, idle, hard, match_len, _ia, _ha, cookie,
     _packets, _bytes) = _NXSTATS.unpack_from(entry)
    match = entry[_NXSTATS.size:_NXSTATS.size + _pad8(match_len)]
    actions = entry[_NXSTATS.size + _pad8(match_len):]
    body = _NXMOD.pack(NX_VENDOR, NXT_FLOW_MOD, cookie, table << 8, idle, hard, priority,
                       NO_BUFFER, ANY16, OFPFF_SEND_FLOW_REM if send_flow_rem else 0,
                       match_len) + match + actions
    return HEADER.pack(OF10, VENDOR, HEADER.size + len(body), xid) + body


OFPMP_GROUP_DESC, GROUP_MOD, OFPG_ALL, OFPG15_BUCKET_ALL = 7, 15, 0xFFFFFFFC, 0xFFFFFFFF
_GDESC15 = struct.Struct("!HBxIH6x")             # ofp15_group_desc_stats, before buckets
_GMOD15 = struct.Struct("!HBxIH2xI")              # ofp15_group_mod after the header


def group_desc_request(xid: int) -> bytes:
    """OpenFlow 1.5 request for the description of every group."""
    body = struct.pack("!HH4xI4x", OFPMP_GROUP_DESC, 0, OFPG_ALL)
    return HEADER.pack(OF15, MULTIPART_REQUEST, HEADER.size + len(body), xid) + body


def group_entries(reply: bytes) -> Iterator[bytes]:
    """The group-desc entries of one OpenFlow 1.5 multipart reply."""
    if reply[0] != OF15 or reply[1] != MULTIPART_REPLY:
        raise ParseError("group desc", reply[:16].hex(), "not an OpenFlow 1.5 multipart reply")
    return _entries(reply, 16, _GDESC15.size)


def group_mod15(entry: bytes, xid: int = 0) -> bytes:
    """The OpenFlow 1.5 ``OFPGC_ADD`` that creates the group of a group-desc *entry*:
    its type, id, buckets (with their ids, weights, watches) and properties (the
    selection method) byte for byte."""
    _length, gtype, group_id, buckets_len = _GDESC15.unpack_from(entry)
    body = _GMOD15.pack(0, gtype, group_id, buckets_len, OFPG15_BUCKET_ALL) \
        + entry[_GDESC15.size:]
    return HEADER.pack(OF15, GROUP_MOD, HEADER.size + len(body), xid) + body


def group_id(entry: bytes) -> int:
    """The group id of a group-desc entry."""
    return int(_GDESC15.unpack_from(entry)[2])


def with_xid(msg: bytes, xid: int) -> bytes:
    """*msg* with its transaction id replaced."""
    return msg[:4] + struct.pack("!I", xid) + msg[8:]


def rule_key(table: int, priority: int, match_text: str) -> tuple[int, int, str]:
    """What names one rule in a table, whatever protocol described it."""
    return (table, priority, match_text)
