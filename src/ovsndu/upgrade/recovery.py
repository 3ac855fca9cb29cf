"""Crash recovery: what a new supervisor does about an upgrade a killed one left in flight.

The in-flight record (``history.py``) names the phase; :func:`~ovsndu.upgrade.machine.
recovery_action` says what to do; :class:`Recovery` does it — kills the orphaned client
and the standby, keeps the original, finishes on the new vswitchd or restores the
original from the upgrade's snapshot — closes the record, and sweeps every upgrade's
leftovers (:mod:`ovsndu.upgrade.leftovers`).  Runs before the supervisor serves, so no
upgrade is under way.  docs/upgrade.md ("Crash recovery") is the operator's view.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import structlog

from ovsndu.config import Config
from ovsndu.errors import HistoryError, OvsnduError, VswitchdError
from ovsndu.model import Snapshot
from ovsndu.ovs import ct_freeze, daemon, ofdir
from ovsndu.ovs.daemon import VswitchdSpec
from ovsndu.ovs.restore import Restorer
from ovsndu.ovs.unixctl import Unixctl, pid_alive
from ovsndu.upgrade import leftovers, machine
from ovsndu.upgrade.conversion import revert_recorded
from ovsndu.upgrade.history import HistoryStore, UpgradeRecord
from ovsndu.upgrade.machine import Phase
from ovsndu.upgrade.serving import Serving, restore_original, snapshot_path

log = structlog.get_logger("ovsndu.supervisor")


class Recovery:
    """Recovery of one state directory for the vswitchd described by *spec*."""

    def __init__(self, cfg: Config, spec: VswitchdSpec, store: HistoryStore) -> None:
        self.cfg = cfg
        self.spec = spec
        self.store = store
        self.state_dir = Path(cfg.ovsndu.state_dir)
        self.serving: Serving | None = None

    def sweep(self) -> None:
        """Remove what interrupted upgrades left (no upgrade runs at start)."""
        removed = leftovers.sweep(self.state_dir, self.spec.netns)
        if removed:
            log.warning("supervisor.swept_leftovers", event_kind="recovery", removed=removed)

    def run(self) -> Serving | None:
        """Finish or roll back an upgrade a killed supervisor left in flight; the
        vswitchd it started when it had to restore the original, else None."""
        self.serving = None
        try:
            rec = self.store.inflight()
        except HistoryError as exc:
            aside = self.store.inflight_path.with_name(f"inflight.corrupt.{int(time.time())}")
            with contextlib.suppress(OSError):
                self.store.inflight_path.rename(aside)
            log.error("supervisor.inflight_unreadable", event_kind="anomaly", reason=str(exc),
                      moved_to=str(aside))
            return None
        if rec is None:
            return None
        if leftovers.kill_client(rec.client_pid):
            log.warning("supervisor.killed_orphan_client", event_kind="recovery",
                        upgrade_id=rec.id, pid=rec.client_pid)
        phase = Phase(rec.phase) if rec.phase else Phase.PREFLIGHT
        action = machine.recovery_action(phase, rec.rollback_mode)  # type: ignore[arg-type]
        log.warning(
            "supervisor.recovering",
            event_kind="recovery",
            upgrade_id=rec.id,
            phase=phase.value,
            action=action,
        )
        snap = self._load_snapshot(rec)
        try:
            outcome = self._recover(rec, action, snap)
            if outcome != "committed":  # a schema conversion goes back with the binary
                rec.anomalies += revert_recorded(
                    rec.schema, self.spec.rundir, self.spec.db, self.state_dir / "work" / rec.id,
                    daemon.read_pid(self.spec.pidfile))
            rec.outcome, rec.exit_code = outcome, (0 if outcome == "committed" else 1)
            rec.reason = (
                f"supervisor restarted during {phase.value}; "
                f"{'finished' if outcome == 'committed' else 'rolled back'}"
            )
        except OvsnduError as exc:
            rec.outcome, rec.exit_code, rec.reason = "failed", 3, f"recovery failed: {exc}"
        rec.anomalies.append(f"supervisor killed during {phase.value}, recovered: {rec.outcome}")
        try:
            self.store.finish(rec)
        except OSError as exc:
            rec.anomalies.append(f"history record not written: {exc}")
            with contextlib.suppress(OSError):
                self.store.inflight_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            snapshot_path(self.state_dir, rec.id).unlink()
        log.warning(
            "upgrade.finished",
            event_kind="recovered",
            upgrade_id=rec.id,
            outcome=rec.outcome,
            reason=rec.reason,
            phase=phase.value,
        )
        return self.serving

    def _load_snapshot(self, rec: UpgradeRecord) -> Snapshot | None:
        path = snapshot_path(self.state_dir, rec.id)
        try:
            return Snapshot.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, OvsnduError):
            return None

    def _recover(self, rec: UpgradeRecord, action: str, snap: Snapshot | None) -> str:
        old = rec.from_pid if rec.from_pid and pid_alive(rec.from_pid) else None
        new = rec.standby_pid if rec.standby_pid and pid_alive(rec.standby_pid) else None
        if old is not None and rec.phase == Phase.HANDOVER.value:
            # The supervisor died while the old process was stopped for its last read
            # (upgrade/lastread.py): it goes on serving.
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGCONT)
        if old is not None and rec.ct_frozen:  # frozen for that read: put the limit back
            with Unixctl.for_daemon(self.spec.rundir, pid=old, timeout=10) as appctl:
                ct_freeze.thaw(appctl, rec.ct_frozen)
            log.warning("supervisor.ct_thawed", event_kind="recovery", upgrade_id=rec.id,
                        pid=old, limits=rec.ct_frozen)
        ofdir.settle(self.spec.rundir, old_alive=old is not None)
        finishable = action in ("commit", "handover") and old is None and new is not None
        if finishable and new is not None and self._finish_on_new(new, snap):
            return "committed"
        if new is not None and new != old:
            daemon.kill(new)
            daemon.remove_stale_files(self.spec, new)
        if old is not None:
            if daemon.read_pid(self.spec.pidfile) != old:
                raise VswitchdError(f"the original vswitchd {old} lost its pidfile")
            return "rolled_back"
        if snap is None:
            raise VswitchdError("no vswitchd serves and the snapshot is lost")
        binary = rec.rollback_binary or rec.from_binary or self.cfg.ovs.vswitchd
        self.serving = restore_original(
            self.spec, binary, snap, tcp_seq_check=self.cfg.upgrade.tcp_seq_check
        )
        return "rolled_back"

    def _finish_on_new(self, pid: int, snap: Snapshot | None) -> bool:
        """The old process is gone and the new one lives: install, lift, verify, keep it."""
        if snap is None:
            return False
        try:
            os.kill(pid, signal.SIGCONT)
            daemon.wait_until(
                lambda: daemon.bridges_built(self.spec.rundir, self.spec.db, pid),
                30,
                "the new vswitchd's bridges",
            )
            if daemon.read_pid(self.spec.pidfile) != pid:
                daemon.promote_standby_pidfile(self.spec, pid)
            daemon.enable_syslog(self.spec, pid)
            Restorer(
                self.spec.rundir,
                self.spec.db,
                pid=pid,
                tcp_seq_check=self.cfg.upgrade.tcp_seq_check,
            ).restore_and_release(snap)
        except OvsnduError as exc:
            log.warning("supervisor.finish_failed", event_kind="anomaly", reason=str(exc))
            return False
        return True
