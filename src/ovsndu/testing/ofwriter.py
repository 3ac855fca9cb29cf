"""A controller that holds its OpenFlow connection open and keeps writing (tests, benchmarks).

:class:`OpenWriter` speaks OpenFlow 1.3 on one connection to a bridge's management
socket, as ovn-controller does, and keeps adding, modifying and deleting flows
(``table=3,priority=100,udp,tp_dst=N``; another table if asked), groups (type all,
one bucket ``output:P``) and meters (kbps, one drop band), each confirmed by a barrier
reply.  It knows what the switch must hold: :attr:`~OpenWriter.flows`, ``groups`` and
``meters`` are the acknowledged result.  When the switch stops answering or the
connection ends (the old process of a reload stopped or was killed), the operation in
flight is *ambiguous* (it may or may not have been applied) and the writer connects
again, like a controller, until stopped.  :func:`tables` reads the same three tables
from raw ``ovs-ofctl`` output.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

OF13 = 4
HEADER = struct.Struct("!BBHI")
FLOW_MOD, GROUP_MOD, METER_MOD, BARRIER_REQUEST, BARRIER_REPLY, ERROR = 14, 15, 29, 20, 21, 1
ADD, MODIFY, MODIFY_STRICT, DELETE, DELETE_STRICT = 0, 1, 2, 2, 4
ANY = 0xFFFFFFFF


def _msg(kind: int, xid: int, body: bytes) -> bytes:
    return HEADER.pack(OF13, kind, HEADER.size + len(body), xid) + body


def flow_mod(xid: int, command: int, port: int, out: int | None, table: int = 3) -> bytes:
    """table=<table>,priority=100,udp,tp_dst=<port>, actions=output:<out> (drop: None)."""
    oxm = (struct.pack("!IH", 0x80000A02, 0x0800) + struct.pack("!IB", 0x80001401, 17)
           + struct.pack("!IH", 0x80002002, port))
    match = struct.pack("!HH", 1, 4 + len(oxm)) + oxm
    match += bytes(-len(match) % 8)
    instructions = b""
    if out is not None:
        action = struct.pack("!HHIH6x", 0, 16, out, 0)
        instructions = struct.pack("!HH4x", 4, 8 + len(action)) + action
    body = struct.pack("!QQBBHHHIIIH2x", 0, 0, table, command, 0, 0, 100, ANY, ANY, ANY, 0)
    return _msg(FLOW_MOD, xid, body + match + instructions)


def group_mod(xid: int, command: int, group_id: int, out: int) -> bytes:
    """Group *group_id*, type all, one bucket ``output:<out>`` (add 0, modify 1, delete 2)."""
    action = struct.pack("!HHIH6x", 0, 16, out, 0)
    bucket = struct.pack("!HHII4x", 16 + len(action), 0, ANY, ANY) + action
    body = struct.pack("!HBxI", command, 0, group_id)
    return _msg(GROUP_MOD, xid, body + (bucket if command != DELETE else b""))


def meter_mod(xid: int, command: int, meter_id: int, rate: int) -> bytes:
    """Meter *meter_id*, kbps, one drop band at *rate* (add 0, modify 1, delete 2)."""
    band = struct.pack("!HHII4x", 1, 16, rate, 0)
    body = struct.pack("!HHI", command, 1, meter_id)
    return _msg(METER_MOD, xid, body + (band if command != DELETE else b""))


class OpenWriter(threading.Thread):
    """Writes through one open connection at a time; every ~*pace* s one step (a flow add,
    and in turn modifies, deletes, groups and meters)."""

    def __init__(self, mgmt: Path, *, pace: float = 0.001, reconnect: bool = True,
                 table: int = 3, keep: int | None = None):
        super().__init__(daemon=True)
        self.mgmt, self.table = Path(mgmt), table
        self.keep = keep  # steps after which an entry is deleted (a table of steady size)
        self.pace, self.reconnect = pace, reconnect
        self.stop = threading.Event()
        self.flows: dict[int, int | None] = {}    # tp_dst -> output port (None: drop)
        self.groups: dict[int, int] = {}          # group id -> output port
        self.meters: dict[int, int] = {}          # meter id -> rate
        self.acked: list[tuple[float, str, int]] = []  # (when, what, key) per acknowledged op
        self.ambiguous: set[tuple[str, int]] = set()  # ops sent, never acknowledged
        self.refused: list[str] = []
        self.connections = 0
        self._sock: socket.socket | None = None
        self._buf = b""
        self._xid = 10
        self.connect()

    def connect(self) -> None:
        """Connect (hello exchanged); OSError when the switch does not accept."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(3)  # a stopped switch: no reply comes
        try:
            sock.connect(str(self.mgmt))
            sock.sendall(HEADER.pack(OF13, 0, 8, 0))
            self._sock, self._buf = sock, b""
            self._read()
        except (OSError, EOFError) as exc:
            sock.close()
            self._sock = None
            raise OSError(f"{self.mgmt.name}: {exc}") from None
        self.connections += 1

    def _read(self) -> bytes:
        assert self._sock is not None
        while len(self._buf) < 8 or len(self._buf) < HEADER.unpack_from(self._buf)[2]:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        n = HEADER.unpack_from(self._buf)[2]
        msg, self._buf = self._buf[:n], self._buf[n:]
        if msg[1] == 2:  # echo request
            self._sock.sendall(msg[:1] + b"\x03" + msg[2:])
            return self._read()
        return msg

    def _do(self, what: str, key: int, make: Callable[[int], bytes]) -> bool:
        assert self._sock is not None
        self._xid += 2
        xid = self._xid
        self.ambiguous.add((what.split(maxsplit=1)[0], key))
        self._sock.sendall(make(xid) + HEADER.pack(OF13, BARRIER_REQUEST, 8, xid + 1))
        ok = True
        while True:
            reply = self._read()
            if reply[1] == ERROR:
                ok = False
                self.refused.append(f"{what} {key}: {reply[8:12].hex()}")
            if reply[1] == BARRIER_REPLY and HEADER.unpack_from(reply)[3] == xid + 1:
                break
        self.ambiguous.discard((what.split(maxsplit=1)[0], key))
        self.acked.append((time.monotonic(), what, key))
        return ok

    def _step(self, n: int) -> None:
        port = 1000 + n
        if self._do("flow add", port, lambda x: flow_mod(x, ADD, port, None, self.table)):
            self.flows[port] = None
        if n % 3 == 0 and port - 2 in self.flows:
            out = n % 50 + 1
            if self._do("flow mod", port - 2,
                        lambda x: flow_mod(x, MODIFY_STRICT, port - 2, out, self.table)):
                self.flows[port - 2] = out
        if n % 4 == 0 and port - 3 in self.flows and self._do(
                "flow del", port - 3,
                lambda x: flow_mod(x, DELETE_STRICT, port - 3, None, self.table)):
            del self.flows[port - 3]
        if n % 5 == 0:
            gid, mid, out = 5000 + n, 500 + n, n % 50 + 1
            if self._do("group add", gid, lambda x: group_mod(x, ADD, gid, out)):
                self.groups[gid] = out
            if self._do("meter add", mid, lambda x: meter_mod(x, ADD, mid, 100 + n)):
                self.meters[mid] = 100 + n
        if n % 10 == 0:
            gid, mid = 5000 + n - 5, 500 + n - 5
            if gid in self.groups and self._do("group mod", gid,
                                               lambda x: group_mod(x, MODIFY, gid, 99)):
                self.groups[gid] = 99
            if mid in self.meters and self._do("meter mod", mid,
                                               lambda x: meter_mod(x, MODIFY, mid, 7)):
                self.meters[mid] = 7
        if n % 15 == 0:
            self._delete_group_and_meter(5000 + n - 10, 500 + n - 10)

    def _forget(self, n: int) -> None:
        """Delete what step *n* - keep added, if still there."""
        if self.keep is None or n <= self.keep:
            return
        port, gid, mid = 1000 + n - self.keep, 5000 + n - self.keep, 500 + n - self.keep
        if port in self.flows and self._do(
                "flow del", port, lambda x: flow_mod(x, DELETE_STRICT, port, None, self.table)):
            del self.flows[port]
        self._delete_group_and_meter(gid, mid)

    def _delete_group_and_meter(self, gid: int, mid: int) -> None:
        """Delete group *gid* and meter *mid*, each if still there."""
        if gid in self.groups and self._do("group del", gid,
                                           lambda x: group_mod(x, DELETE, gid, 0)):
            del self.groups[gid]
        if mid in self.meters and self._do("meter del", mid,
                                           lambda x: meter_mod(x, DELETE, mid, 0)):
            del self.meters[mid]

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and n < 60000:
            if self._sock is None:
                with contextlib.suppress(OSError):
                    self.connect()
                if self._sock is None:
                    if not self.reconnect:
                        return
                    time.sleep(0.05)
                    continue
            n += 1
            try:
                self._step(n)
                self._forget(n)
            except (OSError, EOFError):
                with contextlib.suppress(OSError):
                    self._sock.close()
                self._sock = None
                if not self.reconnect:
                    return
            time.sleep(self.pace)
        if self._sock is not None:
            self._sock.close()

    def kinds(self) -> dict[str, int]:
        """How many operations of each kind were acknowledged."""
        out: dict[str, int] = {}
        for _t, what, _k in self.acked:
            out[what] = out.get(what, 0) + 1
        return out

    def differences(self, flows: dict[int, int | None], groups: dict[int, int],
                    meters: dict[int, int]) -> dict[str, dict[int, tuple[object, object]]]:
        """What the switch holds (:func:`tables`) against what was acknowledged, per table,
        leaving out keys with an ambiguous operation; empty dicts when equal."""
        def diff(kind: str, want: dict[int, object], have: dict[int, object]
                 ) -> dict[int, tuple[object, object]]:
            return {k: (want.get(k), have.get(k)) for k in set(want) | set(have)
                    if want.get(k) != have.get(k) and (kind, k) not in self.ambiguous}
        return {"flows": diff("flow", dict(self.flows), dict(flows)),
                "groups": diff("group", dict(self.groups), dict(groups)),
                "meters": diff("meter", dict(self.meters), dict(meters))}


def tables(ofctl: Callable[..., str], table: int = 3
           ) -> tuple[dict[int, int | None], dict[int, int], dict[int, int]]:
    """The writer's flows, groups and meters as raw ``ovs-ofctl`` dumps show them;
    *ofctl(command, *args)* runs ``ovs-ofctl -O OpenFlow13 COMMAND <bridge> ARGS``."""
    flows: dict[int, int | None] = {}
    for line in ofctl("dump-flows", f"table={table}").splitlines():
        m = re.search(r"priority=100,udp,tp_dst=(\d+) actions=(\S+)", line)
        if m and int(m.group(1)) > 1000:
            out = m.group(2)
            flows[int(m.group(1))] = None if out == "drop" else int(out.split(":")[1])
    groups = {int(g): int(p) for g, p in re.findall(
        r"group_id=(\d+),type=all,bucket=actions=output:(\d+)", ofctl("dump-groups"))
        if int(g) >= 5000}
    meters = {int(m): int(r) for m, r in re.findall(
        r"meter=(\d+) kbps bands=\s*type=drop rate=(\d+)", ofctl("dump-meters"))
        if int(m) >= 500}
    return flows, groups, meters
