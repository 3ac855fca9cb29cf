"""The serving vswitchd's last known state, kept current at bounded cost.

The supervisor restores it into a vswitchd that crashed (see ``Supervisor._monitor``),
so a crash costs the gap of a restart, not the tables.  Keeping it current:

* every :attr:`StateKeeper.poll` seconds one unixctl call reads the coverage counter
  ``ofproto_recv_openflow`` (OpenFlow messages the switch received).  When it moved
  since the last snapshot (a controller or ``ovs-ofctl`` changed something, or just
  asked), a new snapshot is taken — at most every :attr:`StateKeeper.min_gap` seconds;
* every :attr:`StateKeeper.refresh` seconds a snapshot is taken anyway: the state that
  changes without an OpenFlow message (``learn()`` flows, expired timeouts, ports added
  through OVSDB) is at most that old; conntrack and MAC learning too unless their
  tables are large, see below.

Each snapshot's rules are the next read's *known* rules (:func:`ovsndu.ovs.ofdump.read_flows`):
a bridge whose rules the switch still describes byte for byte is not printed and parsed
again (200k rules: ~4 s of CPU less a read), and an upgrade's snapshot starts from the
keeper's the same way (:meth:`StateKeeper.known`).

Our own reads are OpenFlow messages too, so the counter is read again after each
snapshot and that value is the baseline.  A snapshot of 10k flows costs ~0.2 s of CPU
(docs/performance.md has the measured idle cost).

The traffic categories (conntrack, FDB) cost in proportion to the table, and with the
netdev datapath each conntrack dump holds vswitchd's main thread, which forwards
(:mod:`ovsndu.ovs.ct_read`: read zone by zone, each hold short).  So a snapshot reads
them again only when ``last read's seconds / traffic_budget`` have passed since — the
keeper spends at most ``traffic_budget`` of its time on them.  A small table (a read of
a few ms) is read with every snapshot, as the rest; at 100k conntrack entries (a read of
~1.5 s) every ~150 s, and the snapshots in between keep the last ones read.

Where a userspace bridge has ports its main thread polls (system, tap and dummy ports;
not DPDK's, which PMD threads poll), every zone's dump is a silence of those ports as
long as the call: the longest one of the last read, divided by ``hold_budget`` (1e-4:
0.1 ms of silence a second), bounds the interval too.  One zone of 100k entries (a
~250–320 ms dump) is then read every ~54 min instead of every ~110 s; zones of 12.5k
(~65 ms) every ~11 min (``benchmarks.ct_hold --ct-zones Z``).  ``ovsndu status``
shows the interval (``traffic_every_s``) and the hold (``traffic_hold_ms``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from ovsndu.errors import OvsnduError
from ovsndu.model import Port, Snapshot
from ovsndu.ovs import ct_read, daemon, ofdump
from ovsndu.ovs.daemon import VswitchdSpec
from ovsndu.ovs.readers import BridgeInfo, StateReader
from ovsndu.ovs.restore_plan import USERSPACE_DATAPATHS

log = structlog.get_logger("ovsndu.keeper")

COUNTER = "ofproto_recv_openflow"
# Interface types a userspace datapath polls from vswitchd's main thread ("" is system).
MAIN_THREAD_PORTS = frozenset({"", "system", "tap", "dummy"})


def main_thread_forwards(snap: Snapshot, bridges: list[BridgeInfo]) -> bool:
    """Whether a userspace bridge of *snap* has a port its main thread polls (so that a
    conntrack dump, which runs on that thread, silences it)."""
    userspace = {b.name for b in bridges if b.datapath_type in USERSPACE_DATAPATHS}
    return any(isinstance(p, Port) and p.bridge in userspace and p.type in MAIN_THREAD_PORTS
               for p in snap.categories["ports"])


class SnapshotSink(Protocol):
    """Takes a snapshot of the serving process (the keeper's ``adopt``): its PID, the
    snapshot, when it was read (monotonic) and, optionally, how long its conntrack and
    FDB read took (seconds)."""

    def __call__(self, pid: int, snap: Snapshot, taken_at: float,
                 traffic_read_s: float | None = None) -> None: ...


@dataclass
class StateKeeper:
    """Holds the last snapshot of one vswitchd; :meth:`tick` keeps it current (blocking)."""

    spec: VswitchdSpec
    poll: float = 1.0
    min_gap: float = 2.0
    refresh: float = 60.0
    snapshot: Snapshot | None = None
    taken_at: float = 0.0  # monotonic
    pid: int | None = None
    snapshots: int = 0
    traffic_budget: float = 0.01
    traffic_at: float = 0.0  # monotonic, the last read of conntrack and FDB
    traffic_read_s: float = 0.0  # how long that read took
    # its longest hold of forwarding (one dump call), 0 when no port waits on it
    traffic_hold_s: float = 0.0
    hold_budget: float = 1e-4
    traffic_reads: int = 0
    printer: tuple[int, ...] | None = None  # the ovs-ofctl that printed the snapshot's rules
    _baseline: str | None = field(default=None, repr=False)

    def counter(self, pid: int) -> str | None:
        """The switch's OpenFlow message counter, or None when it does not answer."""
        try:
            with daemon.unixctl_for(self.spec, pid, timeout=2) as appctl:
                return appctl("coverage/read-counter", COUNTER).strip()
        except OvsnduError:
            return None

    def forget(self) -> None:
        """The serving process changed: the next tick takes a fresh snapshot."""
        self.pid, self._baseline = None, None

    def due(self, pid: int, now: float) -> bool:
        """Whether a new snapshot should be taken of *pid* now (one cheap unixctl call)."""
        if self.snapshot is None or self.pid != pid or now - self.taken_at >= self.refresh:
            return True
        if now - self.taken_at < self.min_gap:
            return False
        current = self.counter(pid)
        return current is not None and current != self._baseline

    def traffic_due(self, pid: int, now: float) -> bool:
        """Whether the next snapshot reads conntrack and FDB again (else keeps the last)."""
        if self.snapshot is None or self.pid != pid:
            return True
        return now - self.traffic_at >= self.traffic_every_s()

    def traffic_every_s(self) -> float:
        """Seconds between two reads of conntrack and FDB (at least)."""
        return max(self.traffic_read_s / self.traffic_budget,
                   self.traffic_hold_s / self.hold_budget)

    def known(self) -> Snapshot | None:
        """The last snapshot as the rules a new read may find again, byte for byte (the
        read then keeps their text instead of printing and parsing them once more); None
        when there is none or ``ovs-ofctl`` changed since (it may print rules otherwise)."""
        if self.snapshot is None or self.printer is None or \
                self.printer != ofdump.printer_id():
            return None
        return self.snapshot

    def take(self, pid: int) -> Snapshot | None:
        """Snapshot *pid* now; keeps the previous snapshot (and returns None) on failure."""
        printer = ofdump.printer_id()
        reader = StateReader(self.spec.rundir, self.spec.db, pid=pid, known=self.known())
        try:
            began = time.monotonic()
            if self.traffic_due(pid, began):
                snap = reader.snapshot()
                self.traffic_at, self.traffic_read_s = began, reader.traffic_read_s
                self.traffic_hold_s = (ct_read.longest_hold_s(pid)
                                       if main_thread_forwards(snap, reader.bridges) else 0.0)
                self.traffic_reads += 1
            else:
                assert self.snapshot is not None
                snap = reader.snapshot(traffic={c: self.snapshot.categories[c]
                                                for c in ("conntrack", "fdb")})
        except OvsnduError as exc:
            log.warning("keeper.snapshot_failed", event_kind="anomaly", vswitchd_pid=pid,
                        reason=str(exc))
            return None
        self.snapshot, self.pid, self.taken_at = snap, pid, time.monotonic()
        self.printer = printer
        self._baseline = self.counter(pid)
        self.snapshots += 1
        return snap

    def adopt(self, pid: int, snap: Snapshot, taken_at: float,
              traffic_read_s: float | None = None) -> None:
        """An upgrade's snapshot of *pid* (read at monotonic *taken_at*, conntrack and FDB
        included) replaces ours: it is newer, and the supervisor then holds one copy of
        the state instead of two (~150 MiB each at 200k flows and 100k conntrack entries).
        After a commit it is the new process's verified state, under its PID: its
        conntrack and FDB are not read again before the budget says so (*traffic_read_s*:
        how long the upgrade's read of them took).  The next tick reads the OpenFlow state
        again (the OpenFlow counter is not known)."""
        self.snapshot, self.pid, self.taken_at = snap, pid, taken_at
        self.printer = ofdump.printer_id()
        self.traffic_at = taken_at
        if traffic_read_s is not None:
            self.traffic_read_s = max(self.traffic_read_s, traffic_read_s)
        self._baseline = None

    def tick(self, pid: int) -> bool:
        """Take a snapshot of *pid* if one is due; whether one was taken."""
        if not self.due(pid, time.monotonic()):
            return False
        return self.take(pid) is not None
