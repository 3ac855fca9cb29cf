"""Value checks of entries read from outside (a snapshot file): hostile input is refused (pure).

A snapshot file is text someone could have edited.  Its entries become command
lines, bundle lines and packets, so a value OVS could never have printed — a number
beyond its field's width, a newline or a second ``actions=`` inside a match, a
control character anywhere — is refused here, before a restore plans anything, with
one line naming the category, the field and the value.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any

from ovsndu.errors import ModelError
from ovsndu.model.state import METER_ID_NAMES, Entry, Flow, Group, Meter, TlvMapping

U16, U32, U64 = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
_NO_SPACE = r"[^\s]*"

# (category, field) -> highest value (lowest is 0 unless listed in _LOWEST)
_INT_MAX: Mapping[tuple[str, str], int] = {
    ("ports", "ofport"): U16, ("ports", "dp_port"): U32,
    ("flows", "table"): 254, ("flows", "priority"): U16, ("flows", "idle_timeout"): U16,
    ("flows", "hard_timeout"): U16, ("flows", "importance"): U16,
    ("flows", "n_packets"): U64, ("flows", "n_bytes"): U64, ("flows", "idle_age"): U32,
    ("flows", "hard_age"): U32,
    ("meters", "meter_id"): U32, ("groups", "group_id"): 0xFFFFFFF0,
    ("tlv_mappings", "tlv_type"): 0xFF, ("tlv_mappings", "length"): 124,
    ("tlv_mappings", "index"): 63,
    ("conntrack", "wscale_orig"): 14, ("conntrack", "wscale_reply"): 14,
    ("conntrack", "zone"): U16, ("conntrack", "mark"): U32, ("conntrack", "timeout"): U32,
    ("fdb", "vlan"): 4095, ("fdb", "age"): U32, ("routes", "pkt_mark"): U32,
}
_LOWEST: Mapping[tuple[str, str], int] = {("ports", "ofport"): -1, ("meters", "meter_id"): 1,
                                          ("tlv_mappings", "length"): 4}

_BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"

# (category, field) -> full-match pattern of a string field
_PATTERNS: Mapping[tuple[str, str], str] = {
    ("tunnel_neighbors", "mac"): _MAC, ("tunnel_neighbors", "ip"): r"[0-9a-fA-F.:]+",
    ("flows", "cookie"): r"0x[0-9a-f]{1,16}",
    # a match is one comma-separated word: no blank, no second "actions="
    ("flows", "match"): r"(?!.*actions=)" + _NO_SPACE,
    ("flows", "actions"): r".+",
    ("flows", "wire"): _BASE64, ("groups", "wire"): _BASE64,
    ("groups", "type"): r"all|select|indirect|ff|fast_failover",
    ("groups", "properties"): _NO_SPACE, ("groups", "selection_method"): r"[a-z_]+",
    ("tlv_mappings", "tlv_class"): r"0x[0-9a-f]{1,4}",
    ("conntrack", "protocol"): r"[a-z][a-z0-9]*|\d{1,3}",
    ("conntrack", "orig"): r"[a-z_]+=[0-9a-fA-F.:]+(?:,[a-z_]+=[0-9a-fA-F.:]+)*",
    ("conntrack", "reply"): r"[a-z_]+=[0-9a-fA-F.:]+(?:,[a-z_]+=[0-9a-fA-F.:]+)*",
    ("conntrack", "parent"): r"(?:[a-z_]+=[0-9a-fA-F.:]+(?:,[a-z_]+=[0-9a-fA-F.:]+)*)?",
    ("conntrack", "labels"): r"0x[0-9a-f]{1,32}",
    ("conntrack", "state_orig"): r"[A-Z_0-9]+", ("conntrack", "state_reply"): r"[A-Z_0-9]+",
    ("conntrack", "nat"): r"(?:(?:src|dst)=[0-9a-fA-F.:\[\]]+(?:,|$))*",
    ("conntrack", "helper"): r"[a-z0-9_]*",
    ("conntrack", "tcp_flags_orig"): r"[A-Z_|]*", ("conntrack", "tcp_flags_reply"): r"[A-Z_|]*",
    ("fdb", "mac"): _MAC, ("fdb", "port"): r"\d+|LOCAL",
    ("routes", "kind"): r"user|cached", ("routes", "prefix"): r"[0-9a-fA-F.:]+/\d{1,3}",
    ("routes", "dev"): r"\S+", ("routes", "gateway"): r"[0-9a-fA-F.:]+",
    ("routes", "src"): r"[0-9a-fA-F.:]+",
    ("ports", "bridge"): r"\S+", ("ports", "port"): r"\S+", ("ports", "interface"): r"\S+",
}
# (category, tuple field) -> pattern of each element
_ELEMENTS: Mapping[tuple[str, str], str] = {
    ("flows", "flags"): r"send_flow_rem|check_overlap|reset_counts|no_packet_counts"
                        r"|no_byte_counts",
    ("meters", "flags"): r"kbps|pktps|burst|stats",
    ("meters", "bands"): r"type=[a-z_]+(?: [a-z_]+=[0-9a-z]+)*",
    ("groups", "buckets"): _NO_SPACE,
}


def _fail(entry: Entry, name: str, value: Any, why: str) -> ModelError:
    return ModelError(f"{entry.CATEGORY}: field {name!r} {why}: {str(value)[:80]!r}")


def check_entry(entry: Entry) -> None:
    """ModelError (one line) when a value of *entry* is not one OVS could have printed."""
    cat = entry.CATEGORY
    for name, value in entry.to_dict().items():
        key = (cat, name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if not _LOWEST.get(key, 0) <= value <= _INT_MAX.get(key, U64):
                raise _fail(entry, name, value, "is out of range")
        elif isinstance(value, float):
            if not 0 <= value < 2**63:
                raise _fail(entry, name, value, "is out of range")
        elif isinstance(value, str):
            _check_text(entry, name, value, _PATTERNS.get(key))
        elif isinstance(value, list):
            for item in value:
                _check_text(entry, name, item, _ELEMENTS.get(key))
    extra = _EXTRA.get(cat)
    if extra is not None:
        extra(entry)


def _check_text(entry: Entry, name: str, value: str, pattern: str | None) -> None:
    if _CONTROL.search(value):
        raise _fail(entry, name, value, "holds a control character (newline?)")
    if len(value) > 131072:
        raise _fail(entry, name, value[:40], "is too long")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise _fail(entry, name, value, "is not a value OVS prints")


def _meter(entry: Entry) -> None:
    assert isinstance(entry, Meter)
    meter_id = entry.meter_id
    if meter_id > 0xFFFF0000 and meter_id not in METER_ID_NAMES:
        raise _fail(entry, "meter_id", meter_id, "is a reserved id")


def _tlv(entry: Entry) -> None:
    assert isinstance(entry, TlvMapping)
    if entry.length % 4:
        raise _fail(entry, "length", entry.length, "is not a multiple of 4")


def _flow(entry: Entry) -> None:
    """A rule's bytes must be one flow-mod that adds: OpenFlow 1.5 ``FLOW_MOD`` or
    OpenFlow 1.0 ``NXT_FLOW_MOD``, its length field true, its command ADD."""
    assert isinstance(entry, Flow)
    if not entry.wire:
        return
    msg = base64.b64decode(entry.wire)
    ok = len(msg) >= 26 and struct.unpack_from("!H", msg, 2)[0] == len(msg)
    if ok and msg[0] == 6:
        ok = msg[1] == 14 and msg[25] == 0
    elif ok and msg[0] == 1:
        ok = (msg[1] == 4 and struct.unpack_from("!II", msg, 8) == (0x2320, 13)
              and msg[25] == 0)
    else:
        ok = False
    if not ok:
        raise _fail(entry, "wire", entry.wire[:40], "is not an OpenFlow flow-mod that adds")


def _group(entry: Entry) -> None:
    """A group's bytes must be one OpenFlow 1.5 ``GROUP_MOD`` that adds this very group."""
    assert isinstance(entry, Group)
    if not entry.wire:
        return
    msg = base64.b64decode(entry.wire)
    ok = (len(msg) >= 24 and msg[0] == 6 and msg[1] == 15
          and struct.unpack_from("!H", msg, 2)[0] == len(msg)
          and struct.unpack_from("!H", msg, 8)[0] == 0
          and struct.unpack_from("!I", msg, 12)[0] == entry.group_id)
    if not ok:
        raise _fail(entry, "wire", entry.wire[:40], "is not an OpenFlow group-mod that adds it")


_EXTRA: Mapping[str, Callable[[Entry], None]] = {"meters": _meter, "tlv_mappings": _tlv,
                                                 "flows": _flow, "groups": _group}
