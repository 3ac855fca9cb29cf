"""Bundles of packet-outs encoded by OVS's encoder once per kind, not once per packet.

The conntrack replay sends ~2.5 packet-outs an entry (250k at 100k entries); encoding
each through ``ovs-ofctl bundle`` (:func:`ovsndu.ovs.ofbundle.capture`) parsed every
frame's hex and every action list again, seconds at that size.  Packet-outs that share
an input port and an action list differ only in their frame, which every OpenFlow
version's ``PACKET_OUT`` carries last.  So :func:`encode` asks ``ovs-ofctl`` once for
each distinct (input port, actions), with two sample frames of different lengths, and
checks that the two messages are one prefix followed by the frame, differing only in
the length and transaction id of their headers; every packet-out is then that prefix,
its own length and xid, and its frame.  The bundle around them (open, adds, barrier,
commit) is numbered as ``ovs-ofctl bundle`` numbers it (adds from xid 2, then the open,
barrier and commit), so the result is byte for byte what ``ovs-ofctl`` would have
encoded for the same lines (``tests/ovs/test_pktout.py``).  When a sample does not have
that shape, every line goes through ``ovs-ofctl`` as before.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ovsndu.model import Flow, Group
from ovsndu.ovs import ofbundle
from ovsndu.ovs.ofbundle import BUNDLE_ADD, HEADER, CapturedBundle
from ovsndu.ovs.replay import PacketOut

_ADD_PREFIX = HEADER.size + 8  # a BUNDLE_ADD's header, bundle id (4), pad (2), flags (2)
_FIRST_XID = 2  # ovs-ofctl bundle numbers the adds from 2; then open, barrier, commit
# Two sample frames: their lengths differ, so the frame's place in the message shows.
_SAMPLES = (bytes(range(60)), bytes(range(61)))


def _sample_line(in_port: str, actions: str, frame: bytes) -> str:
    return PacketOut(in_port, frame, actions).line()


def _prefixes(kinds: list[tuple[str, str]], version: str
              ) -> tuple[dict[tuple[str, str], bytes], CapturedBundle] | None:
    """Per (input port, actions): the inner packet-out after its header, up to its
    frame; and the samples' bundle (its open, barrier, commit).  None when a sample is
    not shaped as the module says."""
    lines = [_sample_line(port, actions, f) for port, actions in kinds for f in _SAMPLES]
    sampled = ofbundle.capture(lines, version)
    adds, offset = sampled.adds, 0
    messages = []
    while offset < len(adds):
        length = HEADER.unpack_from(adds, offset)[2]
        messages.append(adds[offset:offset + length])
        offset += length
    if len(messages) != len(lines):
        return None
    out: dict[tuple[str, str], bytes] = {}
    head: bytes | None = None
    for k, kind in enumerate(kinds):
        pair = messages[2 * k:2 * k + 2]
        bodies = []
        for msg, frame, xid in zip(pair, _SAMPLES, (2 * k + 2, 2 * k + 3), strict=True):
            version_no, msg_type, length, outer_xid = HEADER.unpack_from(msg)
            inner = msg[_ADD_PREFIX:]
            iv, it, ilen, ixid = HEADER.unpack_from(inner)
            if (msg_type != BUNDLE_ADD or length != len(msg) or outer_xid != xid
                    or ixid != xid or ilen != len(inner) or iv != version_no
                    or not inner.endswith(frame)):
                return None
            if head is None:
                head = msg[HEADER.size:_ADD_PREFIX]
            if msg[HEADER.size:_ADD_PREFIX] != head:
                return None
            bodies.append((it, inner[HEADER.size:len(inner) - len(frame)]))
        if bodies[0] != bodies[1]:
            return None
        out[kind] = bytes([bodies[0][0]]) + bodies[0][1]  # inner type, then the prefix
    return out, sampled


def _with_xid(msg: bytes, xid: int) -> bytes:
    return msg[:4] + struct.pack("!I", xid) + msg[8:]


def encode(packet_outs: Sequence[PacketOut], version: str) -> CapturedBundle:
    """The bundle ``ovs-ofctl -O VERSION bundle`` makes of *packet_outs*' lines (OpenFlow
    1.4+, :data:`ovsndu.ovs.ofbundle.VERSIONS`); VswitchdError when it refuses one."""
    kinds = list(dict.fromkeys((p.in_port, p.actions) for p in packet_outs))
    found = _prefixes(kinds, version) if kinds else None
    if found is None:
        return ofbundle.capture([p.line() for p in packet_outs], version)
    prefixes, sampled = found
    number = ofbundle.VERSIONS[version]
    add_head = sampled.adds[HEADER.size:_ADD_PREFIX]
    pack = HEADER.pack
    parts: list[bytes] = []
    add_lines: dict[int, str | Flow | Group | PacketOut] = {}
    for xid, p in enumerate(packet_outs, _FIRST_XID):
        prefix = prefixes[(p.in_port, p.actions)]
        inner_len = HEADER.size + len(prefix) - 1 + len(p.packet)
        parts += (pack(number, BUNDLE_ADD, _ADD_PREFIX + inner_len, xid), add_head,
                  pack(number, prefix[0], inner_len, xid), prefix[1:], p.packet)
        add_lines[xid] = p
    after = _FIRST_XID + len(packet_outs)
    bundle = CapturedBundle(
        version=number, open_msg=_with_xid(sampled.open_msg, after),
        adds=b"".join(parts),
        barrier=_with_xid(sampled.barrier, after + 1) if sampled.barrier else b"",
        commit=_with_xid(sampled.commit, after + 2 if sampled.barrier else after + 1))
    bundle.add_lines = add_lines
    return bundle
