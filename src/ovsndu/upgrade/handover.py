"""The handover: the standby vswitchd, the ordered takeover, and proof the new one serves.

:func:`start_standby` starts the new vswitchd on the live database (it waits on the
OVSDB lock, its OpenFlow sockets private); :func:`take_over` sets flow-restore-wait,
reads the old process a last time while following its OpenFlow changes until it is
stopped (the final catch-up, upgrade/lastread.py), kills it, lets the client install
and verify, and :func:`prove_serving` checks that the standard tools reach the new
process and that it holds the state, before its OpenFlow sockets are published
(docs/upgrade.md).  Functions of an :class:`~ovsndu.upgrade.runner.UpgradeRunner`,
whose attributes they update.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.model import Entry
from ovsndu.model.delta import Delta, catchup_delta, traffic_identities
from ovsndu.model.window import Settled
from ovsndu.ovs import ct_freeze, daemon, ofdir, preinit
from ovsndu.ovs.catchup import CATCHUP_FILE
from ovsndu.ovs.exit_hold import ExitHold
from ovsndu.ovs.ofdir import PREFIX, PrivateRundir
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.restore import Restorer
from ovsndu.ovs.unixctl import Unixctl
from ovsndu.upgrade.afterlift import AfterLift, when_lifted
from ovsndu.upgrade.lastread import LastRead, read_until_stop, settle
from ovsndu.upgrade.oldexit import hold_old_exit, release_in_background
from ovsndu.upgrade.serving import Serving, record_version

if TYPE_CHECKING:
    from ovsndu.upgrade.runner import UpgradeRunner

log = structlog.get_logger("ovsndu.upgrade")


async def start_standby(run: UpgradeRunner) -> None:
    """Start the new vswitchd on the live database; it must wait on the OVSDB lock.

    When that is safe it first initialises on a private database what it would otherwise
    initialise in the gap (:mod:`ovsndu.ovs.preinit`: DPDK, or the TSC estimate)."""
    with contextlib.suppress(FileNotFoundError):
        run.spec.standby_pidfile.unlink()
    run.schema.mark_log(run.spec.log_file)
    run._workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    of_dir = await asyncio.to_thread(PrivateRundir.create, run.spec.rundir,
                                     run.of_dir.name.removeprefix(PREFIX))
    kind, why = ((await asyncio.to_thread(preinit.decide, run.spec.db, run.new_binary))
                 if run.cfg.upgrade.standby_preinit
                 else (None, "off ([upgrade] standby_preinit = false)"))
    private = None
    if kind is not None:
        try:
            private = await asyncio.to_thread(preinit.Preinit.start, run.spec.db,
                                              of_dir.db_link, run._workdir,
                                              of_dir.private / "preinit-db.sock")
        except OvsnduError as exc:  # an optimisation only: the ordinary standby then
            kind, why = None, str(exc)
    if kind is None:
        log.info("upgrade.preinit_skipped", upgrade_id=run.upgrade_id, phase="standby",
                 event_kind="preinit_skipped", reason=why)
    cpus = None
    try:
        started = time.monotonic()
        stderr_path = run._workdir / "standby.stderr"
        with open(stderr_path, "wb") as stderr:
            run.standby = proc = daemon.spawn(run.spec, run.new_binary, standby=True,
                                               stderr=stderr, ovs_rundir=of_dir.link,
                                               db=private.remote if private else None)
        cpus = (preinit.keep_off_pmds(proc.pid, run.serving.pid)
                if kind == "dpdk" else None)
        run.record.standby_pid = proc.pid
        run._write_inflight()

        def alive() -> None:
            if proc.poll() is not None:
                said = last_lines(stderr_path)
                raise VswitchdError(
                    f"the new vswitchd exited at start with "
                    f"{daemon.exit_description(proc.returncode)}"
                    + (f"; its last words: {said}" if said else ""))

        def ready() -> bool:
            alive()
            return of_dir.share_ctl(proc.pid) and daemon.answers(run.spec, proc.pid)

        await asyncio.to_thread(daemon.wait_until, ready, 20,
                                "the standby vswitchd to answer")
        if private is not None and kind is not None:
            await asyncio.to_thread(_preinitialise, run, private, kind, alive, started)
    finally:
        if private is not None:
            await asyncio.to_thread(private.close)
        if cpus is not None and run.standby is not None and run.standby.poll() is None:
            preinit.give_back(run.standby.pid, cpus)
    if not daemon.answers(run.spec, run.serving.pid):
        raise VswitchdError("the serving vswitchd stopped answering while the standby started")


def _preinitialise(run: UpgradeRunner, private: preinit.Preinit, kind: str,
                   alive: Callable[[], None], started: float) -> None:
    """The standby initialises DPDK or measures the TSC on the private database, then is
    moved to the live one and waits on its lock (marks ``preinit.*``, ms)."""
    assert run.standby is not None
    marks, pid = run.record.marks, run.standby.pid
    command = preinit.INITIALISED_COMMAND if kind == "dpdk" else preinit.LOCKED_COMMAND

    def initialised() -> bool:
        alive()
        try:  # its main thread answers no unixctl while EAL initialises (seconds under load)
            with daemon.unixctl_for(run.spec, pid, timeout=2) as appctl:
                return command in appctl("list-commands")
        except VswitchdError:
            return False

    # dpdk-init=true: a failed initialisation ends the process (alive() says so).
    daemon.wait_until(initialised, 60, f"the standby vswitchd to initialise ({kind})")
    if kind == "tsc":
        measuring = time.monotonic()
        try:
            with daemon.unixctl_for(run.spec, pid, timeout=20) as appctl:
                preinit.measure_tsc(appctl, pid, run.spec.netns)
            marks["preinit.tsc"] = round((time.monotonic() - measuring) * 1000, 2)
        except VswitchdError as exc:  # an optimisation: the estimate runs in the gap then
            alive()
            log.warning("upgrade.preinit_tsc_failed", upgrade_id=run.upgrade_id,
                        phase="standby", event_kind="preinit_tsc_failed", reason=str(exc))
    marks["preinit.initialised"] = round((time.monotonic() - started) * 1000, 2)
    offset = preinit.log_size(run.spec.log_file)
    switched = time.monotonic()
    private.switch()

    def reconnected() -> bool:
        alive()
        if preinit.contended(run.spec.log_file, offset, pid):
            return True
        if not daemon.answers(run.spec, run.serving.pid):  # then nobody holds the lock
            raise VswitchdError("the serving vswitchd stopped answering while the standby "
                                "started")
        return False

    daemon.wait_until(reconnected, 20, "the standby vswitchd to reconnect to the database")
    marks["preinit.reconnected"] = round((time.monotonic() - switched) * 1000, 2)
    log.info("upgrade.preinit", upgrade_id=run.upgrade_id, phase="standby",
             event_kind="preinit", kind=kind, standby_pid=pid,
             initialised_ms=marks["preinit.initialised"],
             reconnected_ms=marks["preinit.reconnected"])


async def take_over(run: UpgradeRunner) -> None:
    """Ordered takeover, install by the client, and proof the new process serves."""
    assert run.standby is not None
    assert run.session is not None
    assert run.snapshot is not None
    spec, snapshot = run.spec, run.snapshot
    # The snapshot's conntrack and FDB identities, for the catch-up delta before the
    # stop (~60 ms at 100k entries): computed now, while the next two wait on the database.
    identities = asyncio.ensure_future(asyncio.to_thread(traffic_identities, snapshot))
    try:
        types = await asyncio.to_thread(daemon.dp_types, spec.db)
        names = sorted(types)
        if "preinit.initialised" in run.record.marks:
            kernel = [n for n, t in sorted(types.items()) if t != "netdev"]
            if kernel:  # its ofproto layer was initialised without them (ovs/preinit.py)
                raise VswitchdError(f"bridges on a kernel datapath were added during the "
                                    f"upgrade ({', '.join(kernel)}); the standby "
                                    f"initialised DPDK without them")
        await asyncio.to_thread(set_frw, run, True)
    finally:
        known = await identities
    hold = await hold_old_exit(run) if run.cfg.upgrade.exit_hold else None
    try:
        await _take_over(run, known, names, hold)
    finally:  # released after the lift already, or now (a failure): waited for here
        if hold is not None:
            await asyncio.shield(asyncio.ensure_future(asyncio.to_thread(hold.release)))


async def _take_over(run: UpgradeRunner, known: dict[str, frozenset[tuple[Any, ...]]],
                     names: list[str], hold: ExitHold | None) -> None:
    """The final read, the kill and the handover gap; *hold* is released once the gap
    ends (forwarding resumed, or a failure)."""
    assert run.standby is not None and run.snapshot is not None
    spec, standby, snapshot, marks = run.spec, run.standby, run.snapshot, run.record.marks
    # The final catch-up (upgrade/lastread.py, docs/upgrade.md "Sync until the
    # handover"): follow the old process's OpenFlow changes, read it a last time, hide
    # its OpenFlow sockets, read conntrack and FDB, stop it and drain the monitors.
    run.last = last = LastRead(run.serving.pid)
    read_started = time.monotonic()

    def hidden_now(hidden: ofdir.HiddenSockets) -> None:
        run.hidden = hidden

    def frozen_now(limits: dict[str, int]) -> None:
        run.record.ct_frozen = limits
        run._write_inflight()

    try:
        await asyncio.to_thread(read_until_stop, spec, last,
                                run.of_dir.name.removeprefix(PREFIX), marks,
                                on_hidden=hidden_now, on_frozen=frozen_now,
                                freeze_max_s=run.cfg.upgrade.ct_freeze_max_ms / 1000,
                                freeze_nat=run.cfg.upgrade.ct_freeze_nat, known=snapshot,
                                known_traffic=known)
    finally:  # a NAT pipeline frozen: what it cost, named (also when a rollback follows)
        if (nat_note := last.nat_note()) is not None:
            run.record.anomalies.append(nat_note)
            log.warning("upgrade.ct_frozen_nat", upgrade_id=run.upgrade_id, phase="handover",
                        event_kind="anomaly", reason=nat_note, refused=last.ct_refused)
    t0 = time.monotonic()
    # Both since the phase began (wall clock, as the record's phase start): when the
    # full read ended and when the old process was stopped; writes between the two
    # reached the new process only through the monitors.
    began = datetime.fromisoformat(run._phase_started_wall).timestamp()
    marks["final_read_done"] = round((last.read_done_wall - began) * 1000, 2)
    marks["old_stopped"] = round((last.stopped_wall - began) * 1000, 2)
    if last.frozen:
        marks["ct_frozen"] = round((last.frozen_wall - began) * 1000, 2)

    def mark(name: str) -> None:
        marks[name] = round((time.monotonic() - t0) * 1000, 2)

    if standby.poll() is not None:  # the old one still holds everything: keep it
        raise VswitchdError(f"the new vswitchd exited with "
                            f"{daemon.exit_description(standby.returncode)} before the takeover")
    gone = await asyncio.to_thread(daemon.ordered_takeover, spec, run.serving.pid,
                                   run.serving.proc, standby.pid)
    last.stopped = False  # killed
    last.close()
    run.last = None
    marks["old_gone"] = round((gone - t0) * 1000, 2)
    if run.hidden is not None:
        run.hidden.remove()
    run.hidden = None
    run._final_read_at = read_started
    old = run.serving
    run.serving = Serving(standby.pid, standby, run.new_binary, run.record.to_version)
    run.on_serving(run.serving)
    run.record.ct_frozen = {}  # the frozen process is gone

    settled: Settled | None = None

    def final_and_delta() -> Delta:
        nonlocal settled
        settled, notes = settle(last, marks)
        after.settled = settled
        for note in [*last.traffic_notes(), *notes]:
            run.record.anomalies.append(note)
            log.warning("upgrade.catchup_incomplete", upgrade_id=run.upgrade_id,
                        phase="handover", event_kind="anomaly", reason=note)
        # Without building the final read: its traffic categories against the snapshot's
        # identities, its OpenFlow ones by digest (docs/performance.md).
        mark("catchup_settled")
        delta = catchup_delta(snapshot, settled.categories(),
                              digests=settled.known_digests(), known=known,
                              traffic=last.traffic_added)
        mark("catchup_computed")
        return delta

    # Once flow-restore-wait is lifted: the final read built, OpenFlow read back.
    after = AfterLift(spec.rundir, spec.db, standby.pid, run.of_dir.private, snapshot)
    try:
        await handover_gap(run, final_and_delta, names, mark, on_lift=after.lifted)
    finally:
        if hold is not None:  # forwarding has resumed (or failed): let the kernel free
            release_in_background(hold)
        # The final read (built after the lift, or now for a rollback): ~1 s of Python
        # at 100k conntrack entries that used to sit inside the gap.
        run.final = await after.final()
    log.info("upgrade.takeover", upgrade_id=run.upgrade_id, phase="handover",
             event_kind="taken_over", old_pid=old.pid, new_pid=standby.pid, **marks)
    run.frw_set = False
    run.record.to_pid = standby.pid
    if last.unfrozen is not None:
        log.info("upgrade.ct_not_frozen", upgrade_id=run.upgrade_id, phase="handover",
                 event_kind="catchup", reason=last.unfrozen)
    if last.ct_limits:
        await asyncio.to_thread(carry_ct_limits, run, standby.pid, last.ct_limits)
    await asyncio.to_thread(record_version, run.spec, run.record.to_version)
    await asyncio.to_thread(prove_serving, run, standby.pid, await after.openflow())
    await asyncio.to_thread(run.schema.check_log, run.spec.log_file)
    # Restored and verified: only now may controllers reach it (docs/upgrade.md).
    published = await asyncio.to_thread(run.of_dir.publish)
    mark("openflow_published")
    log.info("upgrade.openflow_published", upgrade_id=run.upgrade_id, phase="handover",
             event_kind="openflow_published", sockets=published)
    await asyncio.to_thread(ofdir.remove_unused, spec.rundir)


async def handover_gap(run: UpgradeRunner, final_and_delta: Callable[[], Delta],
                       names: list[str], mark: Callable[[str], None],
                       on_lift: Callable[[], None] = lambda: None) -> None:
    """From the kill to the lift: the catch-up delta while the standby builds its
    bridges, the delta written, the standby promoted, the client's install (it lifts
    flow-restore-wait; *on_lift* is called once the database shows it lifted, while the
    client replays the deferred conntrack entries)."""
    assert run.standby is not None and run.session is not None
    spec, standby, marks = run.spec, run.standby, run.record.marks
    # The delta is computed while the standby builds its bridges, not after; both end
    # before either's failure is raised (a rollback then has the settled final read).
    computing = asyncio.ensure_future(asyncio.to_thread(final_and_delta))
    building = asyncio.ensure_future(asyncio.to_thread(
        daemon.wait_bridges, spec, standby, names, 30, of_dir=run.of_dir.private))
    building.add_done_callback(lambda _: mark("bridges_ready"))
    await asyncio.wait({computing, building})
    delta, _ = computing.result(), building.result()
    marks.update({f"catchup.{k}": float(n) for k, n in delta.counts().items()})
    if not delta.empty:
        path = run._workdir / CATCHUP_FILE
        await asyncio.to_thread(lambda: path.write_text(json.dumps(delta.to_dict())))
    mark("catchup_written")
    await asyncio.to_thread(daemon.promote_standby_pidfile, spec, standby.pid)
    await asyncio.to_thread(daemon.enable_syslog, spec, standby.pid)
    await run.session.handover()
    mark("handover_sent")
    watching = asyncio.ensure_future(when_lifted(spec.db, on_lift))
    try:
        await run.session.wait_ready()
    finally:
        watching.cancel()
    mark("client_ready")
    marks.update(run._client_timings())
    # The client lifts flow-restore-wait before its deferred conntrack replay.
    lifted = marks.get("install_lifted_ms")
    marks["flow_restore_wait_lifted"] = (round(marks["handover_sent"] + lifted, 2)
                                         if lifted is not None else marks["client_ready"])
    run.record.handover_gap_ms = marks["flow_restore_wait_lifted"]


def carry_ct_limits(run: UpgradeRunner, pid: int, limits: dict[str, int]) -> None:
    """The old process's conntrack limits on the new one (OVS does not keep them)."""
    try:
        with Unixctl.for_daemon(run.spec.rundir, pid=pid, timeout=10) as appctl:
            carried = ct_freeze.carry_limit(appctl, limits)
    except OvsnduError as exc:
        note = f"conntrack limit {limits} not set on the new vswitchd: {exc}"
        run.record.anomalies.append(note)
        log.warning("upgrade.ct_limit_not_carried", upgrade_id=run.upgrade_id,
                    phase="handover", event_kind="anomaly", reason=note)
        return
    if carried:
        log.info("upgrade.ct_limit_carried", upgrade_id=run.upgrade_id, phase="handover",
                 event_kind="carried", limits=carried)


def set_frw(run: UpgradeRunner, on: bool) -> None:
    with Ovsdb(run.spec.db) as db:
        db.set_flow_restore_wait(on)
    run.frw_set = on


def prove_serving(run: UpgradeRunner, pid: int,
                  openflow: Mapping[str, Sequence[Entry]] | None = None) -> None:
    """The standard tools reach *pid*; the database shows its version; state equal
    (*openflow*: the OpenFlow categories read back after the lift, the snapshot's rules
    known)."""
    assert run.snapshot is not None
    if run.standby is not None and run.standby.poll() is not None:
        raise VswitchdError(f"the new vswitchd exited with status {run.standby.returncode}")
    if daemon.read_pid(run.spec.pidfile) != pid:
        raise VswitchdError(f"{run.spec.pidfile} does not name the new vswitchd {pid}")
    tool = subprocess.run(
        ["ovs-appctl", "version"],
        env=run.spec.env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    number = run.record.to_version.split()[-1]
    if tool.returncode != 0 or f"Open vSwitch) {number}" not in tool.stdout:
        raise VswitchdError(
            f"ovs-appctl does not reach the new vswitchd: "
            f"{(tool.stderr or tool.stdout).strip()[:200]}"
        )
    with Ovsdb(run.spec.db) as db:
        (row,) = db.select("Open_vSwitch", ["ovs_version"])
    if row["ovs_version"] != number:
        raise VswitchdError(
            f"the database shows ovs_version {row['ovs_version']!r}, not {number!r}"
        )
    # What the old process held when it stopped: its final read (else the snapshot).
    held, read_at = run.final or run.snapshot, run._final_read_at or run._snapshot_read_at
    elapsed = time.monotonic() - (read_at or time.monotonic())
    # Conntrack read back without -m/-s: the rule needs presence, reply tuple and NAT,
    # and each zone's read holds the new process's forwarding ~40 % less.
    Restorer(run.spec.rundir, run.spec.db, pid=pid, of_dir=run.of_dir.private).verify(
        held, run.record.anomalies, elapsed=elapsed, openflow=openflow, ct_detail=False)
    if run.final is not None:  # entries the final catch-up found that were not carried
        run._note_uncarried(run.final, refuse=False)



def last_lines(path: Path, count: int = 5) -> str:
    """The last *count* non-empty lines of a process's stderr file, joined by " | "."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-count:])[:500]
