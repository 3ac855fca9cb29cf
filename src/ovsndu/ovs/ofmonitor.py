"""Follow the old vswitchd's OpenFlow changes until it stops (the adapter of ofmonwire).

One OpenFlow 1.5 connection per bridge, opened on the management socket before the
final read: a flow monitor (every table; additions, removals, modifications with their
instructions) and forwarding of the group and meter mods other connections make.  A
thread drains each connection continuously, so the switch never has to queue (Open
vSwitch pauses a flow monitor whose connection backs up; a ``paused`` event makes
:attr:`BridgeMonitor.complete` false and the caller falls back to reading again).

Once the old process is stopped (SIGSTOP), :meth:`BridgeMonitor.drain` reads whatever
is still in the socket: the process can send nothing more, so what was read is every
change it made before it stopped.  :meth:`BridgeMonitor.changes` turns the messages
into :class:`~ovsndu.model.window.Change` s in arrival order, decoding rules, groups and
meters with OVS's own printer as the readers do.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from pathlib import Path

from ovsndu.errors import ParseError, VswitchdError
from ovsndu.model import Group, Meter
from ovsndu.model.window import Change
from ovsndu.ovs import ofdump, ofmonwire, parsers
from ovsndu.ovs.ofbundle import (
    BARRIER_REPLY,
    BARRIER_REQUEST,
    ECHO_REPLY,
    ECHO_REQUEST,
    ERROR,
    HEADER,
    handshake,
)

_SET_UP_XIDS = (1, 2, 3)  # forward request, monitor request, barrier
VENDOR = 4  # OFPT_VENDOR (1.0) / OFPT_EXPERIMENTER (1.5)
#: Unread messages at the stop beyond which changes may have stayed queued in the switch.
#: A Unix socket is full at ~200 KiB of kernel buffers, and each message Open vSwitch
#: sends is its own buffer of ~1 KiB whatever its size: measured full at ~340 flow
#: events (24 KiB of them); far below that, nothing was held back.  Large messages (a
#: bundle's events come in multipart messages of up to 64 KiB) fill it by their bytes.
MAX_BACKLOG, MAX_BACKLOG_BYTES = 64, 64 * 1024


class BridgeMonitor:
    """The monitoring connection of one bridge; messages kept in arrival order."""

    def __init__(self, mgmt: Path, bridge: str, *, timeout: float = 10.0):
        self.bridge = bridge
        self.messages: list[bytes] = []
        self.error = ""
        self.backlog = 0  # messages still unread in the socket when the switch was stopped
        self.backlog_bytes = 0
        self._stop = threading.Event()
        self._buf = bytearray()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._buf = handshake(self._sock, mgmt, ofmonwire.OF15)
            forward, monitor, barrier = _SET_UP_XIDS
            self._sock.sendall(ofmonwire.forward_request(forward)
                               + ofmonwire.monitor_request(monitor)
                               + HEADER.pack(ofmonwire.OF15, BARRIER_REQUEST, HEADER.size,
                                             barrier))
            while True:
                msg = self._next(block=True)
                assert msg is not None
                xid = HEADER.unpack_from(msg)[3]
                if msg[1] == ERROR and xid in _SET_UP_XIDS:
                    raise VswitchdError(f"{mgmt.name}: the switch refused to be followed: "
                                        f"{ofdump.print_messages([msg]).strip()[:200]}")
                if msg[1] == BARRIER_REPLY and xid == barrier:
                    break
                if xid != monitor:  # the (empty) reply to the monitor request is not kept
                    self.messages.append(msg)
        except (OSError, EOFError) as exc:
            self._sock.close()
            raise VswitchdError(f"{mgmt.name}: cannot follow the bridge: {exc}") from None
        except BaseException:
            self._sock.close()
            raise
        self._wake_r, self._wake_w = os.pipe()  # ends the thread's wait at once
        self._thread = threading.Thread(target=self._run, name=f"ofmonitor-{bridge}",
                                        daemon=True)
        self._thread.start()

    def _next(self, *, block: bool) -> bytes | None:
        """The next whole message (echo requests answered), None when nothing is
        readable without blocking."""
        while True:
            if len(self._buf) >= HEADER.size:
                length = HEADER.unpack_from(self._buf)[2]
                if length < HEADER.size:
                    raise VswitchdError("malformed OpenFlow message (length below header)")
                if len(self._buf) >= length:
                    msg = bytes(self._buf[:length])
                    del self._buf[:length]
                    if msg[1] == ECHO_REQUEST:
                        self._sock.sendall(msg[:1] + bytes([ECHO_REPLY]) + msg[2:])
                        continue
                    return msg
            if not block and not select.select([self._sock], [], [], 0)[0]:
                return None
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise EOFError("the switch closed the connection")
            self._buf += chunk

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                ready = select.select([self._sock.fileno(), self._wake_r], [], [], 1)[0]
                if self._sock.fileno() not in ready:
                    continue
                while (msg := self._next(block=False)) is not None:
                    self.messages.append(msg)
                    if len(self._buf) < HEADER.size:
                        break
        except (OSError, EOFError, VswitchdError) as exc:
            self.error = str(exc) or type(exc).__name__

    def drain(self) -> None:
        """Stop the thread and read everything still readable (the switch is stopped)."""
        self._halt()
        if self.error:
            return
        before = len(self.messages)
        before_bytes = sum(len(m) for m in self.messages)
        try:
            while (msg := self._next(block=False)) is not None:
                self.messages.append(msg)
        except (OSError, EOFError, VswitchdError) as exc:
            self.error = str(exc) or type(exc).__name__
        self.backlog += len(self.messages) - before
        self.backlog_bytes += sum(len(m) for m in self.messages) - before_bytes

    def close(self) -> None:
        """Stop following (the old process keeps serving, or is gone)."""
        self._halt()
        with contextlib.suppress(OSError):
            self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _halt(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join(5)

    @property
    def paused(self) -> bool:
        """Whether the switch paused the flow monitor (changes may be missing).  Open vSwitch
        3.1 says so with a Nicira ``NXT_FLOW_MONITOR_PAUSED`` (an OpenFlow 1.0 vendor
        message, even on this OpenFlow 1.5 connection); any vendor message counts."""
        return any(m[1] == VENDOR for m in self.messages) or any(
            u.event == "paused" for m in self.messages if _is_update(m)
            for u in ofmonwire.flow_updates(m))

    @property
    def partial(self) -> bool:
        """Whether a forwarded group mod gave only part of a group (OpenFlow 1.5
        ``insert_bucket``/``remove_bucket``): its new content is known only by reading."""
        return any(ofmonwire.forwarded(m).command in ("insert_bucket", "remove_bucket")
                   for m in self.messages if m[1] == ofmonwire.REQUESTFORWARD)

    @property
    def complete(self) -> bool:
        """Whether the messages hold every change: the connection stayed up, unpaused,
        and the socket was far from full at the stop.  Open vSwitch queues what a full
        socket does not take inside the process (sent later, or never once it is
        killed); with this thread draining, the socket fills only in a burst, and a
        backlog over :data:`MAX_BACKLOG` is taken as one that may have overflowed.  A
        :attr:`partial` group change is not complete either."""
        return (not self.error and not self.paused and not self.partial
                and self.backlog <= MAX_BACKLOG and self.backlog_bytes <= MAX_BACKLOG_BYTES)

    def changes(self) -> list[Change]:
        """The messages as changes, in arrival order (ParseError on anything unknown)."""
        # Decode in batches (one ovs-ofctl run per kind), then put them back in order.
        slots: list[tuple[str, str, int]] = []   # (kind, op, index into its batch)
        flows: list[bytes] = []
        groups: list[bytes] = []
        meters: list[bytes] = []
        idents: list[int] = []
        for msg in self.messages:
            if _is_update(msg):
                for u in ofmonwire.flow_updates(msg):
                    if u.event in ("added", "modified", "removed"):
                        slots.append(("flow", "delete" if u.event == "removed" else "put",
                                      len(flows)))
                        flows.append(u.entry)
                    elif u.event != "resumed":
                        slots.append(("skip", u.event, 0))
            elif msg[1] == ofmonwire.REQUESTFORWARD:
                f = ofmonwire.forwarded(msg)
                if f.entry:
                    batch = groups if f.category == "groups" else meters
                    slots.append((f.category, "put", len(batch)))
                    batch.append(f.entry)
                elif f.command == "delete":
                    everything = f.ident == (ofmonwire.OFPG_ALL if f.category == "groups"
                                             else ofmonwire.OFPM_ALL)
                    slots.append((f.category, "clear" if everything else "delete",
                                  len(idents)))
                    idents.append(f.ident)
                else:  # insert_bucket, remove_bucket: the new content is not given
                    slots.append((f.category, f"unknown:{f.command}", len(idents)))
                    idents.append(f.ident)
            elif msg[1] == VENDOR:  # paused or resumed (see paused): not complete
                slots.append(("skip", "paused", 0))
            elif msg[1] == ERROR:
                raise VswitchdError(f"{self.bridge}: the switch reported an error while "
                                    f"followed: {ofdump.print_messages([msg]).strip()[:200]}")
            else:
                raise ParseError("followed bridge", msg[:16].hex(),
                                 f"unexpected message type {msg[1]}")
        rules = ofdump.flows_of_entries(self.bridge, flows, ofmonwire.flow_desc_prefix()) \
            if flows else []
        made_groups = ofdump.groups_of_entries(
            self.bridge, groups, ofmonwire.group_desc_reply([])[:16]) if groups else []
        if len(made_groups) != len(groups):
            raise ParseError("groups", f"{self.bridge}: {len(groups)} forwarded",
                             f"ovs-ofctl printed {len(made_groups)}")
        made_meters = parsers.parse_meters(self.bridge, ofdump.print_messages(
            ofmonwire.meter_config_replies(meters))) if meters else []
        if len(made_meters) != len(meters):
            raise ParseError("meters", f"{self.bridge}: {len(meters)} forwarded",
                             f"ovs-ofctl printed {len(made_meters)}")
        out: list[Change] = []
        for kind, op, i in slots:
            if kind == "flow":
                out.append(Change("flows", op, self.bridge, rules[i]))
            elif kind == "skip":
                out.append(Change("flows", "unknown", self.bridge, what=f"flow monitor {op}"))
            elif op.startswith("unknown:"):
                out.append(Change(kind, "unknown", self.bridge,
                                  what=f"{op.split(':', 1)[1]} of id {idents[i]}"))
            elif op == "put":
                entry = made_groups[i] if kind == "groups" else made_meters[i]
                out.append(Change(kind, "put", self.bridge, entry))
            elif op == "clear":
                out.append(Change(kind, "clear", self.bridge))
            else:
                out.append(Change(kind, "delete", self.bridge, _named(kind, self.bridge,
                                                                      idents[i])))
        return out


def _is_update(msg: bytes) -> bool:
    return msg[1] == ofmonwire.MULTIPART_REPLY and len(msg) >= 10 and \
        int.from_bytes(msg[8:10], "big") == ofmonwire.OFPMP_FLOW_MONITOR


def _named(category: str, bridge: str, ident: int) -> Group | Meter:
    """An entry that only names what a delete removes (identity: bridge and id)."""
    if category == "groups":
        return Group(bridge=bridge, group_id=ident, type="all")
    return Meter(bridge=bridge, meter_id=ident, flags=(), bands=())


def follow(of_dir: Path, bridges: list[str]) -> dict[str, BridgeMonitor]:
    """A monitor per bridge (its ``.mgmt`` socket in *of_dir*); those opened are closed
    again when one cannot be."""
    monitors: dict[str, BridgeMonitor] = {}
    try:
        for name in bridges:
            monitors[name] = BridgeMonitor(Path(of_dir) / f"{name}.mgmt", name)
    except BaseException:
        for m in monitors.values():
            m.close()
        raise
    return monitors


def wait_stopped(pid: int, timeout: float = 5.0) -> bool:
    """Whether every thread of *pid* is in the stopped state (after SIGSTOP) in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = [Path(t, "stat").read_text().rsplit(")", 1)[1].split()[0]
                      for t in Path(f"/proc/{pid}/task").iterdir()]
        except (OSError, IndexError):
            return False
        if states and all(s in ("T", "t") for s in states):
            return True
        time.sleep(0.001)
    return False
