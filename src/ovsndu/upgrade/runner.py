"""The one place an upgrade's actions are executed: drives the pure machine with real I/O.

Phases (see docs/upgrade.md): preflight → snapshot → client (launch it, stream the
state) → validation (the client's rehearsal digests) → standby (new vswitchd on the
OVSDB lock) → handover (flow-restore-wait, ordered takeover, the client installs
and verifies, the standard tools reach the new process) → commit.  Every failure or
deadline is fed to :mod:`ovsndu.upgrade.machine`, which decides the rollback.
This module owns the phase loop and the record's bookkeeping; the early phases are
:mod:`ovsndu.upgrade.early`'s, the standby and handover
:mod:`ovsndu.upgrade.handover`'s, the rollback :mod:`ovsndu.upgrade.rollback`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from ovsndu.config import Config
from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.model import CATEGORIES, Snapshot
from ovsndu.ovs import ofdir
from ovsndu.ovs.ofdir import PREFIX, PrivateRundir
from ovsndu.protocol.transport import ServerSession
from ovsndu.upgrade import early, leftovers, machine
from ovsndu.upgrade.conversion import SchemaStep, target_schema_file
from ovsndu.upgrade.handover import start_standby, take_over
from ovsndu.upgrade.history import (
    HistoryStore,
    PhaseEntry,
    UpgradeRecord,
    utc_now_iso,
)
from ovsndu.upgrade.keeper import SnapshotSink
from ovsndu.upgrade.lastread import LastRead
from ovsndu.upgrade.machine import Phase
from ovsndu.upgrade.rollback import roll_back
from ovsndu.upgrade.serving import (
    Serving,
    snapshot_path,
    spec_of,
    who_serves,
)

log = structlog.get_logger("ovsndu.upgrade")



Progress = Callable[[dict[str, Any]], None]


class UpgradeRunner:
    """Runs one upgrade to a terminal phase; ``serving`` is updated as the datapath moves."""

    def __init__(
        self,
        cfg: Config,
        serving: Serving,
        store: HistoryStore,
        *,
        new_binary: str,
        timeout: float,
        schema: str = "",
        progress: Progress | None = None,
        on_serving: Callable[[Serving], None] | None = None,
        on_snapshot: SnapshotSink | None = None,
        known: Snapshot | None = None,
    ):
        self.cfg = cfg
        self.spec = spec_of(cfg)
        self.serving = serving
        self.store = store
        self.state_dir = Path(cfg.ovsndu.state_dir)
        self.new_binary = new_binary
        self.timeout = timeout
        self.progress = progress or (lambda _e: None)
        self.on_serving = on_serving or (lambda _s: None)
        # The keeper adopts the upgrade's snapshot (one copy, not two) and, after a
        # commit, the new process's verified state.
        self.on_snapshot: SnapshotSink = on_snapshot or _ignore_snapshot
        self.upgrade_id = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self.record = UpgradeRecord(
            id=self.upgrade_id,
            started_at=utc_now_iso(),
            from_pid=serving.pid,
            from_binary=serving.binary,
            to_binary=new_binary,
        )
        self.snapshot: Snapshot | None = None
        # The keeper's last snapshot: the rules the snapshot read may find again, byte
        # for byte (not printed and parsed again); let go once the snapshot is read.
        self.known = known
        self.session: ServerSession | None = None
        self.client: asyncio.subprocess.Process | None = None
        self.standby: subprocess.Popen[bytes] | None = None
        self.frw_set = False
        self._snapshot_read_at: float | None = None
        # The crash-recovery snapshot file, written while the client rehearses: needed
        # only once the old process is touched (awaited before the standby starts).
        self._snapshot_file: asyncio.Future[None] | None = None
        # The old process's last read (the final catch-up) and when it began.
        self.final: Snapshot | None = None
        self.hidden: ofdir.HiddenSockets | None = None  # the old one's, during its final read
        self.last: LastRead | None = None  # its monitors and SIGSTOP until it is killed
        self._final_read_at: float | None = None
        self.inflight_error: str | None = None
        # The standby's private OVS_RUNDIR: controllers reach it only once it is restored.
        self.of_dir = PrivateRundir(self.spec.rundir, PREFIX + self.upgrade_id.rsplit("-")[-1])
        self._phase_started_wall = utc_now_iso()
        self.schema_file = target_schema_file(
            new_binary, configured_binary=cfg.ovs.vswitchd, configured_schema=cfg.ovs.schema,
            override=schema)
        self.schema = SchemaStep(Path(cfg.ovs.rundir), cfg.ovs.db, self._workdir,
                                 self.state_dir / "backups", self.upgrade_id,
                                 allow_loss=cfg.upgrade.allow_schema_loss,
                                 record=self.record.schema)
        self._phases: dict[Phase, Callable[[], Awaitable[None]]] = {
            Phase.PREFLIGHT: self.preflight,
            Phase.SNAPSHOT: self.take_snapshot,
            Phase.CLIENT: self.run_client,
            Phase.VALIDATION: self.check_validation,
            Phase.STANDBY: self.start_standby,
            Phase.HANDOVER: self.handover,
            Phase.COMMIT: self.commit,
        }

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> UpgradeRecord:
        """Drive the machine to a terminal phase; the finished record."""
        # Every log entry of this task (sync.*, restore, ...) carries the upgrade's id.
        structlog.contextvars.bind_contextvars(upgrade_id=self.upgrade_id)
        loop = asyncio.get_running_loop()
        state, actions = machine.start(
            self.upgrade_id, loop.time(), self.timeout, self.cfg.upgrade.validate
        )
        self._enter(state)
        while True:
            action = actions[0]
            if isinstance(action, machine.Finish):
                break
            if isinstance(action, machine.RunPhase):
                work = self._phases[action.phase]()
            else:
                work = self.rollback(action.mode, action.reason)
            deadline = machine.next_deadline(state)
            event: machine.Event
            try:
                if deadline is None:
                    await work
                else:
                    await asyncio.wait_for(work, max(0.0, deadline - loop.time()))
                event = machine.PhaseSucceeded(state.phase)
            except TimeoutError:
                event = machine.DeadlinePassed()
            except OvsnduError as exc:
                event = machine.PhaseFailed(state.phase, str(exc))
            except OSError as exc:  # the state directory (disk full, read-only, ...)
                event = machine.PhaseFailed(state.phase, f"{exc.strerror or exc}"
                                            f"{f': {exc.filename}' if exc.filename else ''}")
            except Exception as exc:
                log.error(
                    "upgrade.internal_error",
                    upgrade_id=self.upgrade_id,
                    phase=state.phase.value,
                    error=repr(exc),
                    traceback=traceback.format_exc(),
                )
                event = machine.PhaseFailed(state.phase, f"internal error: {exc!r}")
            previous = state
            state, actions = machine.step(state, event, loop.time())
            self._left(previous, state)
            self._enter(state)
        if self._snapshot_file is not None:  # ended before it was needed: let it end
            await asyncio.gather(self._snapshot_file, return_exceptions=True)
        await asyncio.to_thread(self._settle_serving)
        return self._finish(state)

    def _settle_serving(self) -> None:
        """After any outcome, name the process that really serves (pidfile, lock, answers)."""
        known = [self.serving]
        if self.standby is not None:
            known.append(Serving(self.standby.pid, self.standby, self.new_binary,
                                 self.record.to_version))
        try:
            found = who_serves(self.spec, known)
        except OvsnduError as exc:
            found = None
            self.record.anomalies.append(f"cannot tell which vswitchd serves: {exc}")
        if found is None:
            self.record.anomalies.append("no vswitchd holds the pidfile and its bridges after "
                                         "the upgrade; the supervisor will start one")
            return
        if found.pid != self.serving.pid:
            self.record.anomalies.append(f"the serving vswitchd is {found.pid}, not "
                                         f"{self.serving.pid} as tracked; now tracking it")
        self.serving = found
        self.on_serving(found)

    def _write_inflight(self) -> None:
        """The in-flight record; a failure is reported (once) and kept, never raised."""
        try:
            self.store.write_inflight(self.record)
        except OSError as exc:
            if self.inflight_error is None:
                self.inflight_error = f"in-flight record not written: {exc}"
                self.record.anomalies.append(self.inflight_error)
                log.error("upgrade.inflight_not_written", upgrade_id=self.upgrade_id,
                          phase=self.record.phase, event_kind="anomaly", reason=str(exc))

    def _enter(self, state: machine.UpgradeState) -> None:
        self.record.phase = state.phase.value
        self.record.rollback_mode = state.rollback_mode
        self._phase_started_wall = utc_now_iso()
        # The record first: a supervisor killed right after the phase event finds it.
        if state.phase not in machine.TERMINAL:
            self._write_inflight()
        if state.phase not in machine.TERMINAL:
            log.info(
                "upgrade.phase",
                upgrade_id=self.upgrade_id,
                phase=state.phase.value,
                event_kind="phase_started",
                **({"reason": state.reason} if state.phase is Phase.ROLLBACK else {}),
            )
            self.progress(
                {"event": "phase", "phase": state.phase.value, "upgrade_id": self.upgrade_id}
            )

    def _left(self, before: machine.UpgradeState, after: machine.UpgradeState) -> None:
        rec = after.records[-1] if len(after.records) > len(before.records) else None
        if rec is None:
            return
        self.record.phases.append(
            PhaseEntry(
                phase=rec.phase.value,
                started=self._phase_started_wall,
                duration_s=rec.ended - rec.started,
                ok=rec.ok,
                reason=rec.reason,
            )
        )
        kind = "phase_done" if rec.ok else "phase_failed"
        (log.info if rec.ok else log.warning)(
            "upgrade.phase_" + ("done" if rec.ok else "failed"),
            upgrade_id=self.upgrade_id,
            phase=rec.phase.value,
            event_kind=kind,
            seconds=round(rec.ended - rec.started, 4),
            **({"reason": rec.reason} if rec.reason else {}),
        )
        self.progress(
            {
                "event": kind,
                "phase": rec.phase.value,
                "seconds": rec.ended - rec.started,
                "reason": rec.reason,
            }
        )

    def _finish(self, state: machine.UpgradeState) -> UpgradeRecord:
        self.record.outcome = state.outcome
        self.record.exit_code = state.exit_code
        self.record.reason = state.reason
        self.record.anomalies += list(state.anomalies) + self.schema.anomalies
        self.record.phase = state.phase.value
        if self.snapshot is not None:
            self.record.counts = self.snapshot.counts()
            self.record.digests = self.snapshot.digests()
        self._keep_client_log()
        try:
            self.store.finish(self.record)
        except OSError as exc:
            # The outcome still reaches the caller and the journal; no stale in-flight
            # file may make the next supervisor "recover" an upgrade that has ended.
            self.record.anomalies.append(f"history record not written: {exc}")
            log.error("upgrade.record_not_written", upgrade_id=self.upgrade_id,
                      event_kind="anomaly", outcome=state.outcome, reason=str(exc))
            with contextlib.suppress(OSError):
                self.store.inflight_path.unlink()
        with contextlib.suppress(OSError):
            snapshot_path(self.state_dir, self.upgrade_id).unlink()
        leftovers.remove_workdir(self._workdir)  # and a killed client's rehearsal sandbox
        shutil.rmtree(self.state_dir / "rollback" / self.upgrade_id, ignore_errors=True)
        level = log.info if state.outcome == "committed" else log.warning
        level(
            "upgrade.finished",
            upgrade_id=self.upgrade_id,
            phase=state.phase.value,
            event_kind="rollback" if state.outcome == "rolled_back" else "finished",
            outcome=state.outcome,
            exit_code=state.exit_code,
            reason=state.reason,
            from_version=self.record.from_version,
            to_version=self.record.to_version,
        )
        return self.record

    def _client_timings(self) -> dict[str, float]:
        """The client's install step durations (ms), as it logged them, and when its
        preparation's stages ended (``client.STAGE``: ms since it started)."""
        counts = ("ct_deferred", "ct_repaired")
        out: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            for line in (self._workdir / "client.log").read_text().splitlines():
                if line.startswith("prepared "):
                    out.update({f"client.{k}": float(v)
                                for k, v in json.loads(line[9:]).items()})
                if line.startswith("timings "):
                    # Durations in ms, and the deferred conntrack replay's counts as such.
                    out.update({k if k in counts else f"install_{k}_ms": float(v)
                                for k, v in json.loads(line[8:]).items()})
        return out

    def _keep_client_log(self) -> None:
        """A failed client's last words go into the record's anomalies."""
        log_path = self._workdir / "client.log"
        with contextlib.suppress(OSError):
            lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
            if lines and self.record.outcome != "committed":
                self.record.anomalies.append("client: " + lines[-1][:500])

    @property
    def _workdir(self) -> Path:
        return self.state_dir / "work" / self.upgrade_id

    # --- phases ---------------------------------------------------------------------------
    async def preflight(self) -> None:
        """New binary runs; datapaths supported; schema readable; rollback copy taken
        (:mod:`ovsndu.upgrade.early`)."""
        await early.preflight(self)

    async def take_snapshot(self) -> None:
        """Convert the database if needed, read the serving vswitchd, keep it on disk
        (:mod:`ovsndu.upgrade.early`)."""
        await early.take_snapshot(self)

    async def _snapshot_file_written(self) -> None:
        """Wait for the snapshot file (started now if the state was not streamed: its
        write's error, if any, fails the phase)."""
        early.start_snapshot_file(self)
        if self._snapshot_file is not None:
            await self._snapshot_file

    def _note_uncarried(self, snap: Snapshot, *, refuse: bool = True) -> None:
        """Name and count what cannot be carried (:func:`ovsndu.upgrade.early.note_uncarried`)."""
        early.note_uncarried(self, snap, refuse=refuse)

    async def run_client(self) -> None:
        """Launch the client and stream it the state (:mod:`ovsndu.upgrade.early`)."""
        await early.run_client(self)

    async def check_validation(self) -> None:
        """The rehearsal's read-back digests (the client's acknowledgements) equal ours."""
        assert self.snapshot is not None and self.session is not None
        await self._snapshot_file_written()
        applied = self.session.conn.applied
        for name in CATEGORIES:
            _sent, read_back = applied.get(name, ("", ""))
            if read_back != self.snapshot.digest(name):
                raise VswitchdError(
                    f"rehearsal of {name} read back {read_back[:12]}, "
                    f"expected {self.snapshot.digest(name)[:12]}"
                )

    async def start_standby(self) -> None:
        """Start the new vswitchd on the live database (:mod:`ovsndu.upgrade.handover`)."""
        await self._snapshot_file_written()
        await start_standby(self)

    async def handover(self) -> None:
        """Ordered takeover, install by the client, and proof the new process serves
        (:mod:`ovsndu.upgrade.handover`)."""
        await take_over(self)

    async def commit(self) -> None:
        """Tell the client; let it exit; the record is finished by the loop."""
        assert self.session is not None
        await self.session.commit()
        # What the new process holds, verified (prove_serving): the keeper's last known
        # state, so that it does not read 100k conntrack entries again right away (each
        # zone's dump holds the new process's main thread, which forwards).
        held = self.final or self.snapshot
        read_at = self._final_read_at or self._snapshot_read_at
        if held is not None and read_at is not None:
            self.on_snapshot(self.serving.pid, held, read_at,
                             self.record.marks.get("catchup_traffic_read_ms", 0.0) / 1000)
        await self.session.close()
        await self._reap_client(10)

    async def _reap_client(self, timeout: float) -> None:
        if self.client is None or self.client.returncode is not None:
            return
        try:
            await asyncio.wait_for(self.client.wait(), timeout)
        except TimeoutError:
            self.client.kill()
            await self.client.wait()

    # --- rollback -------------------------------------------------------------------------
    async def rollback(self, mode: str, reason: str) -> None:
        """Return to the original process, and prove it by read-back
        (:mod:`ovsndu.upgrade.rollback`)."""
        await roll_back(self, mode, reason)


def _ignore_snapshot(pid: int, snap: Snapshot, taken_at: float,
                     traffic_read_s: float | None = None) -> None:
    """No keeper to hand snapshots to (a :class:`~ovsndu.upgrade.keeper.SnapshotSink`)."""
