"""The final catch-up's read of the old vswitchd, up to the moment it is stopped.

Order (docs/upgrade.md, "Sync until the handover"):

1. per bridge, a monitoring OpenFlow connection (ovs/ofmonitor.py) follows every
   change other connections make: flows, groups, meters;
2. the full read of the OpenFlow and port state (not conntrack and FDB);
3. the OpenFlow sockets are hidden: no new connection reaches the old process; the
   TLV maps (not followed: no event carries them) are read again;
4. conntrack and FDB are read, last, since traffic keeps creating entries; conntrack
   with entry creation frozen (ovs/ct_freeze.py says when not), FDB last; the entries
   the snapshot lacked are found then, not after the stop;
5. the process is stopped (SIGSTOP, every thread) and the monitors drained: it can
   send nothing more, so they hold every change it made up to the stop.

The runner then kills it.  :func:`settle` replays the changes on top of the read
(ovsndu.model.window): what the process held when it stopped.  A bridge that cannot
be followed (it does not allow OpenFlow 1.5) or a monitor the switch paused or lost
falls back to the old way: the OpenFlow state is read again after step 3, and a write
on an already-open connection between that read and the kill is not carried; the
record names it.  If anything fails before the kill, :func:`release` lets the old
process go on (SIGCONT), puts its conntrack limit back and closes the monitors.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.model import Entry, Snapshot
from ovsndu.model.delta import traffic_added
from ovsndu.model.window import Settled, replay_window
from ovsndu.ovs import ct_freeze, ct_read, ofdir, parsers
from ovsndu.ovs.ct_read import zones_named
from ovsndu.ovs.daemon import VswitchdSpec
from ovsndu.ovs.ofctl import ofctl
from ovsndu.ovs.ofdir import HiddenSockets
from ovsndu.ovs.ofmonitor import BridgeMonitor, wait_stopped
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import StateReader, read_bridges
from ovsndu.ovs.unixctl import Unixctl


@dataclass
class LastRead:
    """The old process's last read, its monitors and whether it is stopped."""

    pid: int
    snapshot: Snapshot | None = None  # the full read (step 2)
    # Categories read after it (TLV maps, conntrack, FDB, a fallback's OpenFlow state):
    # the last read is built once, after the lift (a build of 50k rules is ~0.4 s of
    # Python, of 100k conntrack entries ~1 s: neither may sit before the lift).
    replaced: dict[str, list[Entry]] = field(default_factory=dict)
    monitors: dict[str, BridgeMonitor] = field(default_factory=dict)
    stopped: bool = False
    rundir: Path | None = None  # where its control socket is (to thaw conntrack)
    ct_limits: dict[str, int] = field(default_factory=dict)  # per userspace datapath
    frozen: dict[str, int] = field(default_factory=dict)  # limits to put back when frozen
    unfrozen: str | None = None  # why conntrack was not frozen for the read
    nat: str | None = None  # where the pipeline uses NAT (frozen anyway: ct_freeze_nat)
    ct_refused: int | None = None  # commits refused during the freeze (None: not counted)
    ct_missed: int = 0  # unfrozen: entries the table held at the end that the read lacks
    # The traffic entries the snapshot lacked (model/delta.traffic_added), found before
    # the stop when the snapshot's identities are given.
    traffic_added: dict[str, tuple[Entry, ...]] | None = None
    frozen_wall: float = 0.0
    thawed_wall: float = 0.0  # the freeze outlasted its bound and was lifted early
    fallback: list[str] = field(default_factory=list)  # why changes were read again
    read_done_wall: float = 0.0  # time.time() at the end of the full read, at the SIGSTOP
    stopped_wall: float = 0.0

    def thaw_early(self, bound_s: float) -> None:
        """The read outlasts the freeze's bound: let new connections in again (the rest
        of the read has a window, named as when not frozen).  A failure leaves it frozen:
        the stop, or a rollback's :meth:`release`, follows."""
        if self.frozen and not self.stopped and self._thaw() is None:
            self.thawed_wall = time.time()
            self.unfrozen = f"the read outlasted the freeze's bound of {bound_s * 1000:g} ms"

    def release(self) -> str | None:
        """The old process keeps serving (a failure before the kill): continue it, put
        its conntrack limit back, stop following it.  What could not be put back, if
        anything (for the record and the journal)."""
        self.resume()
        if not self.frozen:
            return None
        failed = self._thaw()
        return None if failed is None else (
            f"conntrack of the old vswitchd {self.pid} is still frozen "
            f"(ovs-appctl dpctl/ct-set-maxconns {self.frozen}): {failed}")

    def _thaw(self) -> str | None:
        """Put the conntrack limits back; why that failed, if it did."""
        try:
            assert self.rundir is not None  # set with the freeze
            with Unixctl.for_daemon(self.rundir, pid=self.pid, timeout=10) as appctl:
                ct_freeze.thaw(appctl, self.frozen)
        except OvsnduError as exc:
            return str(exc)
        self.frozen = {}
        return None

    def resume(self) -> None:
        """Continue it (conntrack stays frozen) and stop following it."""
        if self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self.stopped = False
        self.close()

    def traffic_notes(self) -> list[str]:
        """What the conntrack read may lack, for the record's anomalies."""
        if self.frozen or not self.ct_missed:
            return []
        return [f"at least {self.ct_missed} conntrack entries created during the final "
                f"read are not carried (conntrack not frozen: {self.unfrozen})"]

    def nat_note(self) -> str | None:
        """A NAT pipeline was frozen: what new connections' first packets went through
        (ovs/ct_freeze.py), for the record's anomalies and the journal."""
        if self.nat is None or not self.frozen_wall:
            return None
        return ct_freeze.nat_note(self.nat, self.ct_refused)

    def close(self) -> None:
        """Close the monitoring connections."""
        for m in self.monitors.values():
            m.close()


def read_until_stop(spec: VswitchdSpec, last: LastRead, tag: str, marks: dict[str, float],
                    *, on_hidden: Callable[[HiddenSockets], None],
                    on_frozen: Callable[[dict[str, int]], None],
                    freeze_max_s: float = 0.25, freeze_nat: bool = True,
                    known: Snapshot | None = None,
                    known_traffic: Mapping[str, AbstractSet[tuple[Any, ...]]] | None = None
                    ) -> None:
    """Steps 1–5 on the old process ``last.pid``; *last* is filled as it goes (so that a
    failure leaves what :meth:`LastRead.release` needs); *marks* get durations (ms).
    *on_frozen* gets the conntrack limits to put back before they are set to 0; the
    freeze lasts *freeze_max_s* at most; a pipeline that uses NAT is frozen only with
    *freeze_nat*.  *known*: the upgrade's snapshot (a bridge whose rules are still byte
    for byte its rules is not printed and parsed again); *known_traffic*: its traffic
    identities, to find the entries it lacks before the stop (``last.traffic_added``)."""
    pid, last.rundir = last.pid, spec.rundir
    with Ovsdb(spec.db) as db:
        bridges = read_bridges(db)
    unfollowed: dict[str, str] = {}
    for b in bridges:
        if b.of_version != "OpenFlow15":
            unfollowed[b.name] = f"{b.name} does not allow OpenFlow 1.5"
            continue
        try:
            last.monitors[b.name] = BridgeMonitor(spec.rundir / f"{b.name}.mgmt", b.name)
        except VswitchdError as exc:
            unfollowed[b.name] = str(exc)
    started = time.monotonic()
    last.snapshot = StateReader(spec.rundir, spec.db, pid=pid, known=known
                                ).snapshot(traffic=False)
    hid = time.monotonic()
    last.read_done_wall = time.time()
    hidden = ofdir.hide(spec.rundir, tag)
    on_hidden(hidden)
    if unfollowed:  # those bridges the old way (a window remains for them)
        _read_openflow_again(spec, last, hidden, marks, only=set(unfollowed))
    # TLV maps are not followed (no event carries them): read again, cheap.
    tlv_at = time.monotonic()
    last.replaced["tlv_mappings"] = [
        t for b in bridges for t in parsers.parse_tlv_map(
            b.name, ofctl(hidden.directory, b.name, b.of_version, "dump-tlv-map"))]
    traffic_at = time.monotonic()
    with Unixctl.for_daemon(spec.rundir, pid=pid) as appctl:
        dps = appctl("dpctl/dump-dps").split()
        last.ct_limits = ct_freeze.limits(appctl, [d for d in dps if not d.startswith("system@")])
        nat = ct_freeze.uses_nat(last.snapshot.categories["flows"],
                                 last.snapshot.categories["groups"])
        last.unfrozen = ct_freeze.why_not_freeze(dps, nat, freeze_nat=freeze_nat)
        if last.unfrozen is None and freeze_max_s <= 0:
            last.unfrozen = "disabled ([upgrade] ct_freeze_max_ms = 0)"
        timer = None
        if last.unfrozen is None and last.ct_limits:
            refused = ct_freeze.refusals(appctl)
            on_frozen(dict(last.ct_limits))  # recorded first: a crash can put it back
            last.frozen = dict(last.ct_limits)
            ct_freeze.freeze(appctl, last.frozen)
            last.frozen_wall, last.nat = time.time(), nat
            timer = threading.Timer(freeze_max_s, last.thaw_early, (freeze_max_s,))
            timer.start()
        try:
            # Zone by zone (ovs/ct_read.py): the zones the read's flows name, and those
            # known.
            last.replaced.update(StateReader(spec.rundir, spec.db, pid=pid).traffic(
                zones_named(last.snapshot.categories["flows"])))
            if known is not None and known_traffic is not None:
                # Before the stop, not in the gap (100k conntrack entries: ~25 ms, over
                # 100 ms on a busy machine), within the freeze's bound.
                matched = time.monotonic()
                last.traffic_added = traffic_added(known, last.replaced, known=known_traffic)
                marks["catchup_traffic_match_ms"] = round(
                    (time.monotonic() - matched) * 1000, 2)
        except BaseException:
            if last.frozen_wall:  # a rollback follows: counted for the NAT note if it can be
                with contextlib.suppress(OvsnduError):
                    last.ct_refused = ct_freeze.refusals(appctl) - refused
            raise
        finally:
            if timer is not None:  # never an appctl to a stopped process
                timer.cancel()
                timer.join()
        if last.frozen_wall:
            last.ct_refused = ct_freeze.refusals(appctl) - refused
            marks["catchup.ct_refused"] = float(last.ct_refused)
        if not last.frozen:  # what the table holds now that the read does not (a bound)
            # ct-get-nconns (a counter: no hold of forwarding right before the stop,
            # as ct-stats-show's walk would be), less what the read found expired.
            held = sum(ct_read.nconns(appctl, dp) - ct_read.unswept(appctl, dp)
                       for dp in dps)
            last.ct_missed = max(0, held - len(last.replaced["conntrack"]))
    stop_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    last.stopped, last.stopped_wall = True, time.time()
    if not wait_stopped(pid):
        raise VswitchdError(f"the old vswitchd {pid} did not stop within 5 s of SIGSTOP")
    for m in last.monitors.values():
        m.drain()
    drained = time.monotonic()
    broken = [f"{m.bridge}: {_why_incomplete(m)}" for m in last.monitors.values()
              if not m.complete]
    if broken:
        # Continue it and read its OpenFlow state again (the window is back); nothing
        # the monitors saw is used.  Its conntrack stays frozen until the kill.
        last.resume()
        last.monitors = {}
        _read_openflow_again(spec, last, hidden, marks)
    last.fallback = [*unfollowed.values(), *broken]
    marks["catchup_read_ms"] = round((hid - started) * 1000, 2)
    marks["catchup_tlv_read_ms"] = round((traffic_at - tlv_at) * 1000, 2)
    marks["catchup_traffic_read_ms"] = round((stop_at - traffic_at) * 1000, 2)
    marks["catchup_drain_ms"] = round((drained - stop_at) * 1000, 2)
    if last.frozen_wall:
        marks["catchup_ct_frozen_ms"] = round(
            ((last.thawed_wall or last.stopped_wall) - last.frozen_wall) * 1000, 2)


def _why_incomplete(m: BridgeMonitor) -> str:
    if m.error:
        return m.error
    if m.paused:
        return "the switch paused the flow monitor"
    if m.partial:
        return "a group changed by insert_bucket or remove_bucket (content not forwarded)"
    return (f"{m.backlog} messages ({m.backlog_bytes} bytes) unread at the stop "
            "(changes may be held back in the switch)")


def _read_openflow_again(spec: VswitchdSpec, last: LastRead, hidden: HiddenSockets,
                         marks: dict[str, float], *, only: Collection[str] | None = None
                         ) -> None:
    """The OpenFlow state of the bridges *only* (default: all) read again, into
    ``last.replaced``."""
    assert last.snapshot is not None
    began = time.monotonic()
    openflow = StateReader(spec.rundir, spec.db, pid=last.pid, of_dir=hidden.directory
                           ).openflow(only)
    for category, entries in openflow.items():
        earlier = last.replaced.get(category, last.snapshot.categories[category])
        kept = [e for e in earlier
                if only is not None and getattr(e, "bridge", None) not in only]
        last.replaced[category] = [*kept, *entries]
    marks["catchup_openflow_read_ms"] = round((time.monotonic() - began) * 1000, 2)


def settle(last: LastRead, marks: dict[str, float]) -> tuple[Settled, list[str]]:
    """The read with every change the monitors saw replayed on it (after the kill), not
    built (:class:`~ovsndu.model.window.Settled`: the handover builds it after the lift);
    what could not be applied, one text each (for the record's anomalies)."""
    assert last.snapshot is not None
    changes = [c for m in last.monitors.values() for c in m.changes()]
    final, counts, unknown = replay_window(last.snapshot, changes, last.replaced)
    marks.update({f"catchup.window.{k}": float(n) for k, n in counts.items()})
    notes = [f"not followed, OpenFlow state read again before the stop: {why}"
             for why in last.fallback]
    notes += [f"changed after the final read, content unknown, not carried: {u}"
              for u in unknown]
    return final, notes
