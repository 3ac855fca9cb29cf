"""Send encoded packet-outs one by one (not as one bundle) to a switch that is forwarding.

A bundle's packet-outs run all at once when it commits: vswitchd's main thread, which
also polls the ports no PMD thread polls (every non-DPDK port of a netdev datapath),
forwards nothing meanwhile — 10k conntrack entries ≈ 0.2–0.7 s without forwarding.  Sent
as ordinary OpenFlow messages, vswitchd handles at most a few dozen per main-loop
iteration and forwards in between.  Used for the conntrack replay that runs after
forwarding resumed (:mod:`ovsndu.ovs.ct_defer`); the messages are the inner messages
of a bundle encoded beforehand (:func:`ovsndu.ovs.ofbundle.capture`).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

from ovsndu.errors import VswitchdError
from ovsndu.ovs.ofbundle import (
    BARRIER_REQUEST,
    BUNDLE_ADD,
    HEADER,
    CapturedBundle,
    _describe,
    handshake,
    until_barrier,
)

#: Messages sent before waiting for a barrier (bounds what is queued in the switch).
BATCH = 2000
_ADD_PREFIX = HEADER.size + 8  # bundle_id (4), pad (2), flags (2)


def inner_messages(bundle: CapturedBundle) -> Iterator[tuple[int, bytes]]:
    """(outer xid, inner message) of each BUNDLE_ADD of *bundle*."""
    adds, offset = bundle.adds, 0
    while offset < len(adds):
        _version, kind, length, xid = HEADER.unpack_from(adds, offset)
        if kind != BUNDLE_ADD or length < _ADD_PREFIX + HEADER.size:
            raise VswitchdError(f"unexpected message type {kind} in an encoded bundle")
        yield xid, adds[offset + _ADD_PREFIX:offset + length]
        offset += length


def send_unbundled(mgmt: Path, bundle: CapturedBundle, *, timeout: float = 600.0) -> int:
    """Send *bundle*'s messages without the bundle, in batches each closed by a barrier;
    VswitchdError naming the first line the switch refused.  Returns how many were sent."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    sent, barrier_xid = 0, 0xFFFF0000
    by_inner: dict[int, int] = {}
    try:
        buf = handshake(conn, mgmt, bundle.version)
        batch: list[bytes] = []
        messages = list(inner_messages(bundle))
        for i, (outer, msg) in enumerate(messages):
            by_inner[HEADER.unpack_from(msg)[3]] = outer
            batch.append(msg)
            if len(batch) == BATCH or i == len(messages) - 1:
                barrier_xid += 1
                conn.sendall(b"".join(batch)
                             + HEADER.pack(bundle.version, BARRIER_REQUEST, HEADER.size,
                                           barrier_xid))
                sent += len(batch)
                batch = []
                error = until_barrier(conn, buf, barrier_xid)
                if error is not None:
                    inner_xid = HEADER.unpack_from(error)[3]
                    outer_error = bytearray(error)
                    struct.pack_into("!I", outer_error, 4, by_inner.get(inner_xid, inner_xid))
                    raise VswitchdError(f"{mgmt.name}: {_describe(bytes(outer_error), bundle)}")
    except (OSError, EOFError) as exc:
        raise VswitchdError(f"{mgmt.name}: sending packet-outs failed: {exc}") from None
    finally:
        conn.close()
    return sent
