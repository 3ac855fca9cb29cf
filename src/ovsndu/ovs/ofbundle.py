"""OpenFlow bundles encoded ahead of time, sent later: parsing moves out of the gap.

``ovs-ofctl`` is the reference encoder of flow text (nested ``ct`` actions, OF1.5
flags), but it parses at ~20 µs a rule, which at 50k rules is a second of lost
traffic if done during a handover.  :func:`capture` therefore runs ``ovs-ofctl
bundle`` against a stand-in switch on a private socket that answers the handshake,
the bundle open, barrier and commit, and keeps every message byte for byte.
:func:`replay` later sends those bytes to the real switch (hello, open, adds,
barrier, then commit — or discard when any add was refused) and names the
rejected line when the switch refuses one.  Only OpenFlow 1.4+ bundles are
captured; older bridges use ``ovs-ofctl`` directly.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ovsndu.errors import VswitchdError
from ovsndu.model import Flow, Group
from ovsndu.ovs.replay import PacketOut

HEADER = struct.Struct("!BBHI")
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY = 0, 1, 2, 3
BARRIER_REQUEST, BARRIER_REPLY = 20, 21
MULTIPART_REQUEST, MULTIPART_REPLY, PORT_DESC = 18, 19, 13
BUNDLE_CONTROL, BUNDLE_ADD = 33, 34
OPEN_REQUEST, OPEN_REPLY, COMMIT_REQUEST, COMMIT_REPLY = 0, 1, 4, 5
DISCARD_REQUEST, DISCARD_REPLY = 6, 7
VERSIONS = {"OpenFlow14": 5, "OpenFlow15": 6}


@dataclass
class CapturedBundle:
    """The encoded messages of one bundle and which file line each add came from."""

    version: int
    open_msg: bytes
    adds: bytes
    barrier: bytes
    commit: bytes
    # xid -> source line, or the rule (group, packet-out) carried as bytes that names it:
    # read only to name a refused add, so 200k rules do not each keep a text (27.5 MiB).
    add_lines: dict[int, str | Flow | Group | PacketOut] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """How many messages the bundle adds."""
        return len(self.add_lines)


def _read_msg(conn: socket.socket, buf: bytearray) -> bytes:
    while True:
        if len(buf) >= HEADER.size:
            length = HEADER.unpack_from(buf)[2]
            if length < HEADER.size:
                raise VswitchdError("malformed OpenFlow message (length below header)")
            if len(buf) >= length:
                msg = bytes(buf[:length])
                del buf[:length]
                return msg
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise EOFError
        buf += chunk


def handshake(conn: socket.socket, mgmt: Path, version: int) -> bytearray:
    """Connect *conn* to the switch at *mgmt* and exchange hellos; the receive buffer.
    VswitchdError when the switch does not speak *version*."""
    conn.connect(str(mgmt))
    conn.sendall(HEADER.pack(version, HELLO, HEADER.size, 0))
    buf = bytearray()
    hello = _read_msg(conn, buf)
    if hello[1] != HELLO or hello[0] < version:
        raise VswitchdError(f"{mgmt.name}: the switch does not speak OpenFlow version "
                            f"{version} (hello {hello[0]})")
    return buf


def _reply(msg: bytes, msg_type: int, body: bytes = b"") -> bytes:
    version, _, _, xid = HEADER.unpack_from(msg)
    return HEADER.pack(version, msg_type, HEADER.size + len(body), xid) + body


def _control_reply(msg: bytes, reply_type: int) -> bytes:
    bundle_id, _, flags = struct.unpack_from("!IHH", msg, HEADER.size)
    return _reply(msg, BUNDLE_CONTROL, struct.pack("!IHH", bundle_id, reply_type, flags))


def capture(lines: list[str], version: str, *, timeout: float = 600.0) -> CapturedBundle:
    """Encode *lines* (an ``ovs-ofctl bundle`` file) with ovs-ofctl; nothing is installed."""
    number = VERSIONS[version]
    with tempfile.TemporaryDirectory(prefix="ovsndu-of-") as tmp:
        path, listing = Path(tmp) / "switch.sock", Path(tmp) / "bundle.txt"
        listing.write_text("\n".join(lines) + "\n")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)
        result: dict[str, object] = {}
        worker = threading.Thread(target=stand_in, args=(server, number, result), daemon=True)
        worker.start()
        proc = subprocess.run(["ovs-ofctl", "-O", version, "--no-names", "bundle", f"unix:{path}",
                               str(listing)], capture_output=True, text=True,
                              timeout=timeout, check=False)
        # ovs-ofctl is gone: a stand-in still waiting for it to connect (it refused a
        # line before connecting) stops waiting now (shutdown wakes accept on Linux).
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        worker.join(timeout=10)
        server.close()
    if proc.returncode != 0 or "error" in result:
        reason = proc.stderr.strip().splitlines()[-1:] or [str(result.get("error"))]
        raise VswitchdError(f"cannot encode the bundle: {reason[0]} ({result.get('error')})")
    messages = result["messages"]
    assert isinstance(messages, list)
    opens = [m for m in messages if m[1] == BUNDLE_CONTROL and _ctl_type(m) == OPEN_REQUEST]
    adds = [m for m in messages if m[1] == BUNDLE_ADD]
    barriers = [m for m in messages if m[1] == BARRIER_REQUEST]
    commits = [m for m in messages if m[1] == BUNDLE_CONTROL and _ctl_type(m) == COMMIT_REQUEST]
    body = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if len(opens) != 1 or len(commits) != 1 or len(barriers) > 1 or len(adds) != len(body):
        raise VswitchdError(f"unexpected exchange while encoding the bundle "
                            f"({len(opens)} open, {len(adds)} adds for {len(body)} lines)")
    return CapturedBundle(
        version=number, open_msg=opens[0], adds=b"".join(adds),
        barrier=barriers[0] if barriers else b"", commit=commits[0],
        add_lines={HEADER.unpack_from(m)[3]: line for m, line in zip(adds, body, strict=True)},
    )


def _ctl_type(msg: bytes) -> int:
    return int(struct.unpack_from("!H", msg, HEADER.size + 4)[0])


def stand_in(server: socket.socket, version: int, result: dict[str, object],
             accepted: tuple[int, ...] = (BUNDLE_ADD,)) -> None:
    """Play the switch for one ovs-ofctl connection; keep what it sends (in
    ``result["messages"]``).  Message types beyond the handshake, barriers, bundle control
    and the port list must be in *accepted*, else ``result["error"]`` says which came."""
    messages: list[bytes] = []
    result["messages"] = messages
    try:
        conn, _ = server.accept()
        with conn:
            conn.sendall(HEADER.pack(version, HELLO, HEADER.size, 0))
            buf = bytearray()
            while True:
                try:
                    msg = _read_msg(conn, buf)
                except EOFError:
                    return
                msg_type = msg[1]
                if msg_type == HELLO:
                    continue
                if msg_type == ECHO_REQUEST:
                    conn.sendall(_reply(msg, ECHO_REPLY, msg[HEADER.size:]))
                    continue
                messages.append(msg)
                if msg_type == BARRIER_REQUEST:
                    conn.sendall(_reply(msg, BARRIER_REPLY))
                elif msg_type == BUNDLE_CONTROL:
                    kind = _ctl_type(msg)
                    answer = {OPEN_REQUEST: OPEN_REPLY, COMMIT_REQUEST: COMMIT_REPLY,
                              DISCARD_REQUEST: DISCARD_REPLY}.get(kind)
                    if answer is None:
                        result["error"] = f"unexpected bundle control {kind}"
                        return
                    conn.sendall(_control_reply(msg, answer))
                elif msg_type == MULTIPART_REQUEST:
                    # ovs-ofctl asks for the port list (to resolve port names): none here,
                    # the lines name ports by number.
                    messages.pop()
                    kind = struct.unpack_from("!H", msg, HEADER.size)[0]
                    if kind != PORT_DESC:
                        result["error"] = f"unexpected multipart request {kind}"
                        return
                    conn.sendall(_reply(msg, MULTIPART_REPLY, struct.pack("!HH4x", kind, 0)))
                elif msg_type not in accepted:
                    result["error"] = f"unexpected message type {msg_type}"
                    return
    except OSError as exc:
        result["error"] = str(exc)


def replay(mgmt: Path, bundle: CapturedBundle, *, timeout: float = 600.0) -> None:
    """Send a captured bundle to the switch at *mgmt*; VswitchdError naming a refused line."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        buf = handshake(conn, mgmt, bundle.version)
        errors: list[bytes] = []
        _transact(conn, buf, bundle.open_msg, errors)
        if errors:
            raise VswitchdError(f"{mgmt.name}: bundle open refused: {_describe(errors[0], bundle)}")
        conn.sendall(bundle.adds)
        if bundle.barrier:
            _transact(conn, buf, bundle.barrier, errors)
        if errors:
            discard = bytearray(bundle.commit)
            struct.pack_into("!H", discard, HEADER.size + 4, DISCARD_REQUEST)
            _transact(conn, buf, bytes(discard), [])
            raise VswitchdError(f"{mgmt.name}: {_describe(errors[0], bundle)}")
        _transact(conn, buf, bundle.commit, errors)
        if errors:
            raise VswitchdError(f"{mgmt.name}: bundle commit refused: "
                                f"{_describe(errors[0], bundle)}")
    except (OSError, EOFError) as exc:
        raise VswitchdError(f"{mgmt.name}: sending the bundle failed: {exc}") from None
    finally:
        conn.close()


def _transact(conn: socket.socket, buf: bytearray, request: bytes, errors: list[bytes]) -> None:
    """Send *request*, then read until its reply; errors for other requests are kept."""
    conn.sendall(request)
    xid = HEADER.unpack_from(request)[3]
    while True:
        msg = _read_msg(conn, buf)
        if msg[1] == ECHO_REQUEST:
            conn.sendall(_reply(msg, ECHO_REPLY, msg[HEADER.size:]))
            continue
        if msg[1] == ERROR:
            errors.append(msg)
        if HEADER.unpack_from(msg)[3] == xid:
            return


def _describe(error: bytes, bundle: CapturedBundle) -> str:
    """The switch's error, decoded by ovs-ofctl, and the line it refused."""
    xid = HEADER.unpack_from(error)[3]
    try:
        text = subprocess.run(["ovs-ofctl", "ofp-print", error.hex()], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    first = text.splitlines()[0] if text else f"OpenFlow error {error[8:12].hex()}"
    kind = first.split("):", 1)[-1].strip() if "):" in first else first
    line = line_of(bundle, xid)
    return f"Error {kind} for: {line}" if line else f"Error {kind}"


def line_of(bundle: CapturedBundle, xid: int) -> str | None:
    """The bundle line (``flow add ...``) of the add with *xid*, if it has one."""
    line = bundle.add_lines.get(xid)
    if line is None or isinstance(line, str):
        return line
    if isinstance(line, PacketOut):
        return line.line()
    return f"{'flow' if isinstance(line, Flow) else 'group'} add {line.spec()}"


def splice(bundle: CapturedBundle, at: int, adds: list[bytes],
           lines: Sequence[str | Flow | Group | PacketOut]) -> None:
    """Insert ready ``BUNDLE_ADD`` messages (*adds*, described by *lines*) after the bundle's
    first *at* adds: rules carried as bytes join rules encoded from text, in order."""
    offset = 0
    for _ in range(at):
        offset += HEADER.unpack_from(bundle.adds, offset)[2]
    bundle.adds = bundle.adds[:offset] + b"".join(adds) + bundle.adds[offset:]
    for msg, line in zip(adds, lines, strict=True):
        bundle.add_lines[HEADER.unpack_from(msg)[3]] = line


def from_adds(adds: list[bytes], lines: list[str], *, bundle_id: int = 1) -> CapturedBundle:
    """An OpenFlow 1.5 bundle (atomic, ordered) around ready flow-mods, no ovs-ofctl needed:
    *adds* are whole messages (their xids name them in errors), *lines* their text."""
    def control(kind: int, xid: int) -> bytes:
        body = struct.pack("!IHH", bundle_id, kind, 3)
        return HEADER.pack(6, BUNDLE_CONTROL, HEADER.size + len(body), xid) + body

    wrapped = []
    for msg in adds:
        xid = HEADER.unpack_from(msg)[3]
        body = struct.pack("!I2xH", bundle_id, 3) + msg
        wrapped.append(HEADER.pack(6, BUNDLE_ADD, HEADER.size + len(body), xid) + body)
    bundle = CapturedBundle(version=6, open_msg=control(OPEN_REQUEST, 1), adds=b"",
                            barrier=HEADER.pack(6, BARRIER_REQUEST, HEADER.size, 2),
                            commit=control(COMMIT_REQUEST, 3))
    splice(bundle, 0, wrapped, lines)
    return bundle


def until_barrier(conn: socket.socket, buf: bytearray, xid: int) -> bytes | None:
    """Read until the barrier reply *xid*; the first error seen before it, if any."""
    first: bytes | None = None
    while True:
        msg = _read_msg(conn, buf)
        if msg[1] == ECHO_REQUEST:
            conn.sendall(_reply(msg, ECHO_REPLY, msg[HEADER.size:]))
            continue
        if msg[1] == ERROR and first is None:
            first = msg
        if HEADER.unpack_from(msg)[3] == xid:
            return first
