"""A controller holding one OpenFlow connection open through a reload loses no write.

The writer speaks OpenFlow 1.3 on a single connection to br0's management socket (as
ovn-controller does) and keeps adding, modifying and deleting flows, groups and meters,
each confirmed by a barrier reply, until the old process stops answering; it does not
reconnect.  Every acknowledged write — including those of the last 500 ms before the
old process stopped, after its final read — must be what the new process holds, judged
by raw ``ovs-ofctl`` dumps of it.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from datetime import datetime
from pathlib import Path

from tests.upgrade.conftest import Rig

OF13 = 4
HEADER = struct.Struct("!BBHI")
FLOW_MOD, GROUP_MOD, METER_MOD, BARRIER_REQUEST, BARRIER_REPLY, ERROR = 14, 15, 29, 20, 21, 1
ADD, MODIFY_STRICT, DELETE_STRICT = 0, 2, 4
ANY = 0xFFFFFFFF


def _msg(kind: int, xid: int, body: bytes) -> bytes:
    return HEADER.pack(OF13, kind, HEADER.size + len(body), xid) + body


def _flow_mod(xid: int, command: int, port: int, out: int | None) -> bytes:
    """table=3,priority=100,udp,tp_dst=<port>, actions=output:<out> (drop when None)."""
    oxm = (struct.pack("!IH", 0x80000A02, 0x0800) + struct.pack("!IB", 0x80001401, 17)
           + struct.pack("!IH", 0x80002002, port))
    match = struct.pack("!HH", 1, 4 + len(oxm)) + oxm
    match += bytes(-len(match) % 8)
    instructions = b""
    if out is not None:
        action = struct.pack("!HHIH6x", 0, 16, out, 0)
        instructions = struct.pack("!HH4x", 4, 8 + len(action)) + action
    body = struct.pack("!QQBBHHHIIIH2x", 0, 0, 3, command, 0, 0, 100, ANY, ANY, ANY, 0)
    return _msg(FLOW_MOD, xid, body + match + instructions)


def _group_mod(xid: int, command: int, group_id: int, out: int) -> bytes:
    action = struct.pack("!HHIH6x", 0, 16, out, 0)
    bucket = struct.pack("!HHII4x", 16 + len(action), 0, ANY, ANY) + action
    body = struct.pack("!HBxI", command, 0, group_id)
    return _msg(GROUP_MOD, xid, body + (bucket if command != 2 else b""))


def _meter_mod(xid: int, command: int, meter_id: int, rate: int) -> bytes:
    band = struct.pack("!HHII4x", 1, 16, rate, 0)
    body = struct.pack("!HHI", command, 1, meter_id)  # kbps
    return _msg(METER_MOD, xid, body + (band if command != 2 else b""))


class OpenWriter(threading.Thread):
    """One connection; ops in order, each followed by a barrier; the expected tables."""

    def __init__(self, mgmt: Path):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(mgmt))
        self.sock.sendall(HEADER.pack(OF13, 0, 8, 0))
        self.buf = b""
        self._read()  # hello
        self.stop = threading.Event()
        self.flows: dict[int, int | None] = {}    # tp_dst -> output port (None: drop)
        self.groups: dict[int, int] = {}          # group id -> output port
        self.meters: dict[int, int] = {}          # meter id -> rate
        self.acked: list[float] = []              # when each op was acknowledged
        self.pending: tuple[str, int] | None = None  # the op sent but never acknowledged
        self.refused: list[str] = []
        self.kinds: dict[str, int] = {}

    def _read(self) -> bytes:
        while len(self.buf) < 8 or len(self.buf) < HEADER.unpack_from(self.buf)[2]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        n = HEADER.unpack_from(self.buf)[2]
        msg, self.buf = self.buf[:n], self.buf[n:]
        if msg[1] == 2:  # echo request
            self.sock.sendall(msg[:1] + b"\x03" + msg[2:])
            return self._read()
        return msg

    def _do(self, what: str, key: int, msg: bytes) -> bool:
        xid = HEADER.unpack_from(msg)[3]
        self.pending = (what, key)
        self.sock.sendall(msg + HEADER.pack(OF13, BARRIER_REQUEST, 8, xid + 1))
        ok = True
        while True:
            reply = self._read()
            if reply[1] == ERROR:
                ok = False
                self.refused.append(f"{what} {key}: {reply[8:12].hex()}")
            if reply[1] == BARRIER_REPLY and HEADER.unpack_from(reply)[3] == xid + 1:
                break
        self.pending = None
        self.acked.append(time.monotonic())
        self.kinds[what] = self.kinds.get(what, 0) + 1
        return ok

    def run(self) -> None:
        self.sock.settimeout(3)  # the old process stopped: no barrier reply comes
        n, xid = 0, 10
        try:
            while not self.stop.is_set() and n < 60000:
                time.sleep(0.001)
                n += 1
                xid += 2
                port = 1000 + n
                if self._do("flow add", port, _flow_mod(xid, ADD, port, None)):
                    self.flows[port] = None
                if n % 3 == 0 and port - 2 in self.flows:
                    xid += 2
                    if self._do("flow mod", port - 2,
                                _flow_mod(xid, MODIFY_STRICT, port - 2, n % 50 + 1)):
                        self.flows[port - 2] = n % 50 + 1
                if n % 4 == 0 and port - 3 in self.flows:
                    xid += 2
                    if self._do("flow del", port - 3, _flow_mod(xid, DELETE_STRICT, port - 3,
                                                                None)):
                        del self.flows[port - 3]
                if n % 5 == 0:
                    gid, mid = 5000 + n, 500 + n
                    xid += 2
                    if self._do("group add", gid, _group_mod(xid, 0, gid, n % 50 + 1)):
                        self.groups[gid] = n % 50 + 1
                    xid += 2
                    if self._do("meter add", mid, _meter_mod(xid, 0, mid, 100 + n)):
                        self.meters[mid] = 100 + n
                if n % 10 == 0 and 5000 + n - 5 in self.groups:
                    gid, mid = 5000 + n - 5, 500 + n - 5
                    xid += 2
                    if self._do("group mod", gid, _group_mod(xid, 1, gid, 99)):
                        self.groups[gid] = 99
                    xid += 2
                    if mid in self.meters and self._do("meter mod", mid,
                                                       _meter_mod(xid, 1, mid, 7)):
                        self.meters[mid] = 7
                if n % 15 == 0 and 5000 + n - 10 in self.groups:
                    gid, mid = 5000 + n - 10, 500 + n - 10
                    xid += 2
                    if self._do("group del", gid, _group_mod(xid, 2, gid, 0)):
                        del self.groups[gid]
                    xid += 2
                    if mid in self.meters and self._do("meter del", mid,
                                                       _meter_mod(xid, 2, mid, 0)):
                        del self.meters[mid]
        except (OSError, EOFError):
            pass  # the old process was stopped or killed: the connection ends here
        finally:
            self.sock.close()


def _tables(rig: Rig) -> tuple[dict[int, int | None], dict[int, int], dict[int, int]]:
    flows: dict[int, int | None] = {}
    for line in rig.sb.ofctl("br0", "dump-flows", "table=3", version="OpenFlow13").splitlines():
        m = re.search(r"priority=100,udp,tp_dst=(\d+) actions=(\S+)", line)
        if m:
            out = m.group(2)
            flows[int(m.group(1))] = None if out == "drop" else int(out.split(":")[1])
    groups = {int(g): int(p) for g, p in re.findall(
        r"group_id=(\d+),type=all,bucket=actions=output:(\d+)",
        rig.sb.ofctl("br0", "dump-groups", version="OpenFlow13"))}
    meters = {int(m): int(r) for m, r in re.findall(
        r"meter=(\d+) kbps bands=\s*type=drop rate=(\d+)",
        rig.sb.ofctl("br0", "dump-meters", version="OpenFlow13"))}
    return ({k: v for k, v in flows.items() if k > 1000},
            {k: v for k, v in groups.items() if k >= 5000},
            {k: v for k, v in meters.items() if k >= 500})


def _differences(want: dict[int, object], have: dict[int, object],
                 pending: int | None) -> dict[int, tuple[object, object]]:
    return {k: (want.get(k), have.get(k)) for k in set(want) | set(have)
            if want.get(k) != have.get(k) and k != pending}


def test_open_connection_writes_until_the_stop_are_kept(rig: Rig) -> None:
    """Adds, modifies and deletes of flows, groups and meters on one open connection,
    up to the old process's stop, are all in the new process."""
    writer = OpenWriter(rig.sb.mgmt_path("br0"))
    writer.start()
    time.sleep(0.3)
    code, result = rig.reload()
    writer.stop.set()
    writer.join(30)
    assert code == 0, result
    assert not writer.refused, writer.refused
    flows, groups, meters = _tables(rig)
    pending = writer.pending[1] if writer.pending else None  # sent, never acknowledged
    marks = result["record"]["marks"]
    assert _differences(writer.flows, flows, pending) == {}, marks  # type: ignore[arg-type]
    assert _differences(writer.groups, groups, pending) == {}, marks  # type: ignore[arg-type]
    assert _differences(writer.meters, meters, pending) == {}, marks  # type: ignore[arg-type]
    # The writer kept writing until the old process stopped: writes were acknowledged
    # all through its last 500 ms, and some after the final read ended (carried by the
    # monitors alone).
    (phase,) = [p for p in result["record"]["phases"] if p["phase"] == "handover"]
    began = (datetime.fromisoformat(phase["started"]).timestamp()
             - (time.time() - time.monotonic()))
    stopped, read_done = (began + marks["old_stopped"] / 1000,
                          began + marks["final_read_done"] / 1000)
    assert sum(1 for t in writer.acked if stopped - 0.5 <= t <= stopped) >= 20, marks
    assert any(read_done < t <= stopped for t in writer.acked), marks
    assert marks.get("catchup.window.flows.put", 0) > 0, marks
    # br1 of the sample allows no OpenFlow 1.5: it alone is read again (and named).
    assert result["record"]["anomalies"] == [
        "not followed, OpenFlow state read again before the stop: "
        "br1 does not allow OpenFlow 1.5"], result["record"]["anomalies"]
    for kind in ("flow add", "flow mod", "flow del", "group add", "group mod", "group del",
                 "meter add", "meter mod", "meter del"):
        assert writer.kinds.get(kind, 0) > 0, writer.kinds
