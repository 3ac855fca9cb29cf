"""Install a snapshot into a running (normally freshly started) vswitchd, and prove it.

Order, per docs/state.md: check bridges and ports (flows name ports by number, so
a different OpenFlow port number is an error before anything is installed) and
plan every replay (an entry that cannot be replayed is an error before anything
is installed); then per bridge TLV map → meters → one atomic bundle of groups and
flows; FDB, tunnel neighbours, user routes; conntrack replay; and finally a
read-back whose digests must equal the snapshot's.

A bridge whose OpenFlow part fails is put back as found (its flows untouched by
the atomic bundle; meters and TLV mappings the restore added removed again), and
the restore stops with an error naming the rejected entry.  The steps outside
OpenFlow (datapath ports, static FDB, user routes, kernel conntrack) are
:mod:`ovsndu.ovs.restore_dp`'s.
"""


from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ovsndu.errors import OvsnduError, RestoreError, VswitchdError
from ovsndu.model import (
    Conntrack,
    Entry,
    Flow,
    Meter,
    Snapshot,
    TlvMapping,
    TunnelNeighbor,
)
from ovsndu.ovs import ct_read, ofbundle, ofdump, ofmeters, parsers, restore_dp
from ovsndu.ovs.ct_replay_later import replay_deferred
from ovsndu.ovs.ofbundle import CapturedBundle
from ovsndu.ovs.ofctl import ofctl
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import BridgeInfo, StateReader, default_rundir
from ovsndu.ovs.replay import Replayed
from ovsndu.ovs.restore_plan import (
    USERSPACE_DATAPATHS,
    RestorePlan,
    bond_members,
    build_plan,
    version_of,
)
from ovsndu.ovs.restore_plan import entries_of as _of
from ovsndu.ovs.restore_plan import reason_of as _reason
from ovsndu.ovs.uncarried import refuse_if_any
from ovsndu.ovs.unixctl import Unixctl
from ovsndu.ovs.verify import (
    controlled_bridges,
    describe_difference,
    mac_aging_times,
    user_routes_only,
    verify_readback,
    without_bridges,
)

__all__ = [  # names other modules import from here
    "USERSPACE_DATAPATHS",
    "RestorePlan",
    "RestoreReport",
    "Restorer",
    "bond_members",
    "controlled_bridges",
    "describe_difference",
    "mac_aging_times",
    "restore_snapshot",
    "user_routes_only",
    "without_bridges",
]


@dataclass
class RestoreReport:
    """What a restore did: seconds per step, entries per category, the read-back."""

    durations: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    after: Snapshot | None = None
    anomalies: list[str] = field(default_factory=list)


class Restorer:
    """Restores snapshots into the vswitchd of *rundir* (found by its pidfile unless *pid*)."""

    def __init__(self, rundir: str | Path | None = None, db: str | None = None, *,
                 pid: int | None = None, tcp_seq_check: bool = False,
                 uncarried: str = "report", of_dir: str | Path | None = None,
                 replayed: Replayed | None = None):
        self.rundir = Path(rundir or default_rundir())
        self.replayed = replayed  # conntrack lines shared between plans (replay.py)
        self.db = db or f"unix:{self.rundir / 'db.sock'}"
        self.pid = pid
        self.tcp_seq_check = tcp_seq_check
        self.uncarried = uncarried
        # Where its OpenFlow sockets are: the rundir, or a private one (ovsndu.ovs.ofdir).
        self.of_dir = Path(of_dir) if of_dir is not None else self.rundir
        refuse_if_any((), uncarried)  # a bad mode is an error now, not at the first entry
        self._added: dict[str, tuple[bool, bool]] = {}  # bridge -> (TLV map, meters) added

    def restore(self, snap: Snapshot, *, verify: bool = True, fresh: bool = False
                ) -> RestoreReport:
        """Plan, apply and (by default) verify; RestoreError names what failed.

        Atomic for the OpenFlow state: everything is planned (every bundle parsed) before
        the first change; when applying or the read-back fails, the target's TLV maps,
        meters, groups and flows are put back as they were found (unless *fresh*).
        """
        started = time.monotonic()
        plan = self.plan(snap, encode=True)
        before = None if fresh else self._openflow_state()
        try:
            report = self.apply(plan, fresh=fresh)
            report.durations["plan"] = report.durations.get("plan", 0.0) + plan_seconds(
                started, report)
            if verify:
                with self._step(report, "verify"):
                    report.after = self.verify(snap, report.anomalies)
        except (RestoreError, VswitchdError) as exc:
            if before is None:
                raise
            if isinstance(exc, VswitchdError):
                exc = RestoreError("openflow", str(exc))
            try:
                self._put_back(before)
            except OvsnduError as undo:
                raise RestoreError(exc.category, f"{exc.reason}; putting the target back as "
                                   f"found FAILED: {undo}") from None
            raise RestoreError(exc.category, f"{exc.reason} (the target's OpenFlow state was "
                               "put back as found)") from None
        return report

    def _openflow_state(self) -> Snapshot:
        """The target's ports and OpenFlow state (TLV maps, meters, groups, flows) as found."""
        now = StateReader(self.rundir, self.db, pid=self.pid).snapshot(traffic=False)
        for name in ("tunnel_neighbors", "routes"):
            now = now.replace(name, [])
        return now

    def _put_back(self, before: Snapshot) -> None:
        """Install *before* (from :meth:`_openflow_state`) again and check it by read-back."""
        Restorer(self.rundir, self.db, pid=self.pid).apply(self.plan(before, encode=True))
        after = StateReader(self.rundir, self.db, pid=self.pid).snapshot(traffic=False)
        for name in ("flows", "groups", "meters", "tlv_mappings"):
            if after.digest(name) != before.digest(name):
                raise RestoreError(name, "read-back differs from the state found: "
                                   + describe_difference(name, before, after))

    def lift_flow_restore_wait(self) -> None:
        """Let the target forward: remove ``other_config:flow-restore-wait`` (ovsndu set it)."""
        with Ovsdb(self.db) as db:
            db.set_flow_restore_wait(False)

    def restore_and_release(self, snap: Snapshot, *, fresh: bool = False,
                            read_at: float | None = None) -> RestoreReport:
        """Restore *snap* into a vswitchd held by flow-restore-wait, let it forward, then
        verify by read-back (outside the forwarding gap).  *read_at*: the monotonic time
        *snap* was read (entries that expired since are not looked for)."""
        report = self.restore(snap, verify=False, fresh=fresh)
        self.lift_flow_restore_wait()
        elapsed = time.monotonic() - read_at if read_at is not None else 0.0
        report.after = self.verify(snap, report.anomalies, elapsed=elapsed)
        return report

    # --- planning (reads only the database; nothing installed) ----------------------------
    def plan(self, snap: Snapshot, *, encode: bool = False,
             defer_window: float | None = None) -> RestorePlan:
        """Check bridges and OpenFlow port numbers, and build every line to send
        (:func:`ovsndu.ovs.restore_plan.build_plan`)."""
        # Its read-back then reads conntrack zone by zone from the start (ovs/ct_read.py).
        ct_read.hint_zones({e.zone for e in snap.categories["conntrack"]
                            if isinstance(e, Conntrack)})
        return build_plan(snap, self.db, self.uncarried, encode=encode,
                          defer_window=defer_window, replayed=self.replayed)

    # --- applying -------------------------------------------------------------------------
    def apply(self, plan: RestorePlan, *, fresh: bool = False) -> RestoreReport:
        """Send a plan.  *fresh*: the target was just started (no TLV map, no meters), so
        nothing needs to be read or removed first."""
        snap, report = plan.snapshot, RestoreReport()
        report.anomalies += [u.line() for u in plan.uncarried]
        with Unixctl.for_daemon(self.rundir, pid=self.pid) as appctl:
            self._appctl = appctl
            with self._step(report, "check"):
                restore_dp.check_dp_ports(snap, plan.bridges, self._appctl)
            with self._step(report, "fdb"):
                restore_dp.fdb_statics(snap, plan.port_names, self._call)
                for br, port, vlan, mac in plan.fdb.decoys:
                    self._call("fdb", "fdb/add", br, port, str(vlan), mac)
            if plan.has_tcp and not self.tcp_seq_check:
                # Replayed handshakes cannot know the live stream's sequence numbers.
                for dp in self._call("conntrack", "dpctl/dump-dps").split():
                    # one knob per datapath; with several, each must be named
                    self._call("conntrack", "dpctl/ct-disable-tcp-seq-chk", dp)
            try:
                # Bridge by bridge, so a failure leaves each bridge whole or as found.
                for bridge in plan.bridges:
                    with self._step(report, "openflow"):
                        self._tlv_and_meters(snap, bridge, fresh=fresh,
                                             encoded_meters=plan.meter_msgs.get(bridge.name))
                        self._bundle_or_undo(snap, bridge, plan.bundles[bridge.name],
                                             plan.encoded.get(bridge.name))
                        self._nx_flows(bridge, plan.nx_flows.get(bridge.name, []))
                with self._step(report, "openflow"):
                    self._ct_chunks(plan, plan.ct_extra)
            finally:
                for br, _port, vlan, mac in plan.fdb.decoys:
                    with contextlib.suppress(VswitchdError):
                        self._appctl("fdb/del", br, str(vlan), mac)
            with self._step(report, "tunnel_neighbors"):
                for n in snap.categories["tunnel_neighbors"]:
                    assert isinstance(n, TunnelNeighbor)
                    self._call("tunnel_neighbors", "tnl/neigh/set", n.bridge, n.ip, n.mac)
            with self._step(report, "routes"):
                restore_dp.user_routes(snap, self._appctl, self._call)
            if snap.categories["conntrack"] and plan.ct_bridge is None:
                with self._step(report, "conntrack"):
                    restore_dp.kernel_conntrack(snap)
        report.counts = snap.counts()
        return report

    def _ct_chunks(self, plan: RestorePlan, chunks: list[list[str]]) -> None:
        for chunk in chunks:
            assert plan.ct_bridge is not None
            self._checked_bundle(plan.ct_bridge, version_of(plan, plan.ct_bridge), chunk,
                                 "conntrack", encoded=plan.ct_encoded.get(id(chunk)))

    def replay_later(self, plan: RestorePlan) -> dict[str, int]:
        """Replay the deferred conntrack entries (forwarding has resumed), then repair the
        ones traffic met first (:func:`ovsndu.ovs.ct_replay_later.replay_deferred`).
        Returns ``{"deferred": N, "repaired": M}``; RestoreError when a repair fails."""
        if not plan.ct_later:
            return {"deferred": 0, "repaired": 0}

        def send(lines: list[str], what: str) -> None:
            assert plan.ct_bridge is not None
            self._checked_bundle(plan.ct_bridge, version_of(plan, plan.ct_bridge), lines,
                                 "conntrack", what=what, encoded=plan.ct_encoded.get(id(lines)))

        with Unixctl.for_daemon(self.rundir, pid=self.pid) as appctl:
            self._appctl = appctl
            return replay_deferred(plan, appctl, self.of_dir, send)

    def _tlv_and_meters(self, snap: Snapshot, bridge: BridgeInfo, *, fresh: bool,
                        encoded_meters: list[bytes] | None = None) -> None:
        name, version = bridge.name, bridge.of_version
        tlvs = [e for e in _of(snap, "tlv_mappings", name) if isinstance(e, TlvMapping)]
        meters = [e for e in _of(snap, "meters", name) if isinstance(e, Meter)]
        if meters and bridge.meter_version is None:
            raise RestoreError("meters", f"bridge {name} allows no OpenFlow 1.3+ for meters")
        if not fresh:
            current = {t.canonical() for t in parsers.parse_tlv_map(
                name, self._ofctl(name, version, "dump-tlv-map"))}
            if current <= {t.canonical() for t in tlvs}:
                tlvs = [t for t in tlvs if t.canonical() not in current]  # add what is missing
            else:
                # OVS refuses to delete a mapping a flow uses: the flows go first (the
                # bundle installs the snapshot's; a failure puts the target back as found).
                self._ofctl(name, version, "del-flows")
                self._ofctl(name, version, "del-tlv-map")
            if bridge.meter_version is not None:
                self._ofctl(name, "OpenFlow13", "del-meters")
        self._added[name] = (bool(tlvs), bool(meters))
        try:
            if tlvs:
                self._ofctl(name, version, "add-tlv-map", ",".join(t.spec() for t in tlvs))
            if meters and encoded_meters is not None:  # prepared bytes, one connection
                try:
                    ofmeters.send(self.of_dir / f"{name}.mgmt", encoded_meters,
                                  [m.spec() for m in meters])
                except VswitchdError as exc:
                    raise RestoreError("meters", f"{name} rejected {_reason(exc)}") from None
                meters = []
            for m in meters:
                try:
                    self._ofctl(name, "OpenFlow13", "add-meter", m.spec())
                except VswitchdError as exc:
                    raise RestoreError("meters", f"{name} rejected meter {m.spec()!r}: "
                                       f"{_reason(exc)}") from None
        except BaseException:
            self._undo(bridge)
            raise

    def _undo(self, bridge: BridgeInfo) -> None:
        """Remove the TLV map and meters this restore added to *bridge*."""
        added_tlv, added_meters = self._added.get(bridge.name, (False, False))
        with contextlib.suppress(OvsnduError):
            if added_meters:
                self._ofctl(bridge.name, "OpenFlow13", "del-meters")
            if added_tlv:
                self._ofctl(bridge.name, bridge.of_version, "del-tlv-map")

    def _bundle_or_undo(self, snap: Snapshot, bridge: BridgeInfo, lines: list[str],
                        encoded: CapturedBundle | None = None) -> None:
        n_groups = sum(1 for e in _of(snap, "groups", bridge.name))
        n_flows = sum(1 for e in _of(snap, "flows", bridge.name))
        try:
            self._checked_bundle(bridge.name, bridge.of_version, lines, "flows",
                                 what=f"the bundle of {n_groups} groups and {n_flows} flows",
                                 encoded=encoded)
        except RestoreError:
            self._undo(bridge)
            raise

    def _nx_flows(self, bridge: BridgeInfo, flows: list[Flow]) -> None:
        """Rules only OpenFlow 1.0 expresses, after the bundle (still before forwarding)."""
        try:
            ofdump.send_unbundled(self.of_dir / f"{bridge.name}.mgmt", flows)
        except VswitchdError as exc:
            self._undo(bridge)
            raise RestoreError("flows", f"{bridge.name} rejected an OpenFlow 1.0 rule: "
                               f"{_reason(exc)}") from None

    def _checked_bundle(self, bridge: str, version: str, lines: list[str], category: str,
                        *, what: str = "the replay", encoded: CapturedBundle | None = None
                        ) -> None:
        try:
            if encoded is not None:
                ofbundle.replay(self.of_dir / f"{bridge}.mgmt", encoded)
            else:
                self._bundle(bridge, version, lines)
        except VswitchdError as exc:
            reason = _reason(exc)
            if "PACKET_OUT" in reason or "for: packet-out" in reason:
                category = "conntrack" if "ct(" in reason else "fdb"
            elif "GROUP_MOD" in reason or "for: group" in reason:
                category = "groups"
            raise RestoreError(category, f"{bridge} rejected {what}, none installed: "
                               f"{reason}") from None

    # --- verification -------------------------------------------------------------------
    def verify(self, snap: Snapshot, anomalies: list[str] | None = None, *,
               elapsed: float = 0.0,
               openflow: Mapping[str, Sequence[Entry]] | None = None,
               ct_detail: bool = True) -> Snapshot:
        """Read everything back (*openflow*: those categories read already); RestoreError
        naming the first category that lost something
        (:func:`ovsndu.ovs.verify.verify_readback`, *ct_detail* as there)."""
        return verify_readback(snap, self.rundir, self.db, pid=self.pid, of_dir=self.of_dir,
                               anomalies=anomalies, elapsed=elapsed, openflow=openflow,
                               ct_detail=ct_detail)

    # --- plumbing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _step(self, report: RestoreReport, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            report.durations[name] = report.durations.get(name, 0.0) + time.monotonic() - started

    def _call(self, category: str, command: str, *args: str) -> str:
        try:
            return self._appctl(command, *args)
        except VswitchdError as exc:
            raise RestoreError(category, f"{command} {' '.join(args)}: {_reason(exc)}") from None

    def _ofctl(self, bridge: str, version: str, *args: str) -> str:
        return ofctl(self.of_dir, bridge, version, *args)

    def _bundle(self, bridge: str, version: str, lines: Iterable[str]) -> None:
        with tempfile.NamedTemporaryFile("w", prefix="ovsndu-", suffix=".bundle") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            self._ofctl(bridge, version, "bundle", f.name)


def plan_seconds(started: float, report: RestoreReport) -> float:
    """Time spent planning: the total so far minus what applying took."""
    return max(0.0, time.monotonic() - started - sum(report.durations.values()))


def restore_snapshot(snap: Snapshot, rundir: str | Path | None = None, db: str | None = None,
                     *, pid: int | None = None, tcp_seq_check: bool = False,
                     verify: bool = True, uncarried: str = "report") -> RestoreReport:
    """Convenience: ``Restorer(...).restore(snap)``."""
    return Restorer(rundir, db, pid=pid, tcp_seq_check=tcp_seq_check,
                    uncarried=uncarried).restore(snap, verify=verify)
