"""Meter mods encoded before the handover and sent as bytes inside it.

OpenFlow bundles cannot carry meter mods, so a restore added each meter with one
``ovs-ofctl add-meter`` process: ~10–30 ms each, inside the gap (40 meters ≈ 0.4–1.2 s
on this VM).  :func:`capture` runs those ``ovs-ofctl`` processes beforehand against a
stand-in switch on a private socket and keeps each METER_MOD message; :func:`send`
writes them all to the real switch on one connection and waits for a barrier, naming
the meter the switch refused.  ``ovs-ofctl`` stays the encoder (its meter syntax is the
reference).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

from ovsndu.errors import VswitchdError
from ovsndu.model import Meter
from ovsndu.ovs.ofbundle import (
    BARRIER_REQUEST,
    HEADER,
    CapturedBundle,
    _describe,
    handshake,
    stand_in,
    until_barrier,
)

METER_MOD = 29  # OpenFlow 1.3 and later
VERSIONS = {"OpenFlow13": 4, "OpenFlow14": 5, "OpenFlow15": 6}


def capture(specs: list[str], version: str = "OpenFlow13", *, timeout: float = 60.0
            ) -> list[bytes]:
    """The METER_MOD message ``ovs-ofctl add-meter`` sends for each of *specs*."""
    out: list[bytes] = []
    with tempfile.TemporaryDirectory(prefix="ovsndu-meters-") as tmp:
        for spec in specs:
            # Twice at most: under load the exchange with the stand-in failed now and then
            # (CI, a loaded full suite); the encoding is local and repeatable, and a
            # second failure is reported with both sides' words.
            mod, why = _capture_one(Path(tmp) / f"{len(out)}a.sock", spec, version=version,
                                    timeout=timeout)
            if mod is None:
                mod, why = _capture_one(Path(tmp) / f"{len(out)}b.sock", spec,
                                        version=version, timeout=timeout)
            if mod is None:
                raise VswitchdError(f"cannot encode meter {spec!r}: {why}")
            # Every ovs-ofctl numbers its first request alike: renumber, so that an
            # error names its meter.
            renumbered = bytearray(mod)
            struct.pack_into("!I", renumbered, 4, len(out) + 1)
            out.append(bytes(renumbered))
    return out


def _capture_one(path: Path, spec: str, *, version: str, timeout: float
                 ) -> tuple[bytes | None, str]:
    """One ``ovs-ofctl add-meter`` against a stand-in listening on *path* (its own
    socket: a stand-in left waiting by a failed attempt cannot take the next attempt's
    connection); its METER_MOD, or None and why the exchange failed (both sides')."""
    result: dict[str, object] = {}
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(1)
        server.settimeout(timeout)  # the stand-in gives up if ovs-ofctl never connects
        worker = threading.Thread(target=stand_in,
                                  args=(server, VERSIONS[version], result, (METER_MOD,)),
                                  daemon=True)
        worker.start()
        proc = subprocess.run(["ovs-ofctl", "-O", version, "add-meter", f"unix:{path}", spec],
                              capture_output=True, text=True, timeout=timeout, check=False)
        worker.join(timeout=10)
    finally:
        server.close()
    got = result.get("messages")
    mods = [m for m in got if m[1] == METER_MOD] if isinstance(got, list) else []
    if proc.returncode == 0 and len(mods) == 1:
        return mods[0], ""
    why = (proc.stderr.strip().splitlines()[-1:] or ["no meter mod sent"])[0]
    if worker.is_alive():
        why += " (the stand-in still waits)"
    return None, why + (f" (stand-in: {result['error']})" if result.get("error") else "")


_FLAG_BITS = {"kbps": 1, "pktps": 2, "burst": 4, "stats": 8}
_BAND_TYPES = {"drop": 1, "dscp_remark": 2}


def encode(meter: Meter, command: int, xid: int) -> bytes | None:
    """The OpenFlow 1.3 METER_MOD (*command*: 0 add, 1 modify) for *meter*, encoded here
    (no ``ovs-ofctl`` process: the final catch-up runs inside the gap); None for anything
    beyond plain ids, the four flags and drop/dscp_remark bands, which goes by ovs-ofctl.
    tests/ovs/test_ofmonitor.py checks they install what dump-meters read."""
    if not 0 < meter.meter_id < 0xFFFF0000 or not set(meter.flags) <= set(_FLAG_BITS):
        return None
    bands = b""
    for band in meter.bands:
        fields = dict(w.split("=", 1) for w in band.split())
        kind = _BAND_TYPES.get(fields.pop("type", ""))
        if kind is None or not set(fields) <= {"rate", "burst_size", "prec_level"} or \
                (kind == 1 and "prec_level" in fields) or "rate" not in fields:
            return None
        try:
            rate, burst = int(fields["rate"]), int(fields.get("burst_size", 0))
            prec = int(fields.get("prec_level", 0))
        except ValueError:
            return None
        bands += struct.pack("!HHIIB3x", kind, 16, rate, burst, prec)
    flags = sum(_FLAG_BITS[f] for f in meter.flags)
    body = struct.pack("!HHI", command, flags, meter.meter_id) + bands
    return HEADER.pack(4, METER_MOD, HEADER.size + len(body), xid) + body


def send(mgmt: Path, messages: list[bytes], specs: list[str], *, timeout: float = 60.0
         ) -> None:
    """Send the captured meter mods to the switch at *mgmt*, then a barrier; VswitchdError
    naming the first meter (of *specs*, same order) the switch refused."""
    if not messages:
        return
    version = messages[0][0]
    barrier_xid = 0xFFFFFF00
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    by_xid = {HEADER.unpack_from(m)[3]: spec for m, spec in zip(messages, specs, strict=True)}
    try:
        buf = handshake(conn, mgmt, version)
        conn.sendall(b"".join(messages)
                     + HEADER.pack(version, BARRIER_REQUEST, HEADER.size, barrier_xid))
        first = until_barrier(conn, buf, barrier_xid)
    except (OSError, EOFError) as exc:
        raise VswitchdError(f"{mgmt.name}: sending meters failed: {exc}") from None
    finally:
        conn.close()
    if first is not None:
        spec = by_xid.get(HEADER.unpack_from(first)[3], "?")
        kind = _describe(first, CapturedBundle(version, b"", b"", b"", b""))
        raise VswitchdError(f"{mgmt.name}: meter {spec!r}: {kind}")
