"""ovs/ofwire.py groups: a group-desc entry becomes the OpenFlow 1.5 group-mod that adds
the same group, buckets and properties byte for byte (pure)."""

from __future__ import annotations

import struct

import pytest

from ovsndu.errors import ParseError
from ovsndu.ovs import ofwire

BUCKETS = bytes(range(32))          # opaque to the codec: carried as they are
PROPS = b"\xff\xff\x00\x08\x00\x00\x00\x01"


def _entry(gtype: int, gid: int) -> bytes:
    return struct.pack("!HBxIH6x", 16 + len(BUCKETS) + len(PROPS), gtype, gid,
                       len(BUCKETS)) + BUCKETS + PROPS


def _reply(*entries: bytes, more: bool = False) -> bytes:
    body = struct.pack("!HH4x", ofwire.OFPMP_GROUP_DESC, int(more)) + b"".join(entries)
    return ofwire.HEADER.pack(6, ofwire.MULTIPART_REPLY, 8 + len(body), 9) + body


def test_group_mod_adds_the_same_group() -> None:
    entry = _entry(1, 4294967040)
    mod = ofwire.group_mod15(entry, xid=77)
    version, kind, length, xid = ofwire.HEADER.unpack_from(mod)
    assert (version, kind, length, xid) == (6, 15, len(mod), 77)
    command, gtype, gid, blen, bucket = struct.unpack_from("!HBxIH2xI", mod, 8)
    assert (command, gtype, gid, blen, bucket) == (0, 1, 4294967040, len(BUCKETS), 0xFFFFFFFF)
    assert mod[24:] == BUCKETS + PROPS


def test_entries_of_a_reply() -> None:
    a, b = _entry(0, 1), _entry(3, 2)
    assert list(ofwire.group_entries(_reply(a, b))) == [a, b]
    assert [ofwire.group_id(e) for e in (a, b)] == [1, 2]
    assert not ofwire.more_follows(_reply(a)) and ofwire.more_follows(_reply(a, more=True))


def test_bad_replies_are_errors() -> None:
    with pytest.raises(ParseError):
        list(ofwire.group_entries(_reply(_entry(0, 1))[:-4]))        # truncated entry
    with pytest.raises(ParseError):
        list(ofwire.group_entries(b"\x04" + _reply(_entry(0, 1))[1:]))  # not OpenFlow 1.5


def test_request_asks_for_every_group() -> None:
    req = ofwire.group_desc_request(5)
    assert ofwire.HEADER.unpack_from(req) == (6, ofwire.MULTIPART_REQUEST, len(req), 5)
    assert struct.unpack_from("!H", req, 8)[0] == ofwire.OFPMP_GROUP_DESC
    assert struct.unpack_from("!I", req, 16)[0] == ofwire.OFPG_ALL
