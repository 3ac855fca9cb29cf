"""The supervisor: the long-running daemon that owns the serving vswitchd.

It starts (or adopts) ovs-vswitchd, keeps its last known state current
(:mod:`ovsndu.upgrade.keeper`) and restarts it with that state if it dies outside an
upgrade, serves the control socket (``reload``, ``status``, ``reexec``, ``release``:
:mod:`ovsndu.control_server`), runs at most one upgrade at a time, and on start
finishes or rolls back an upgrade a previous instance left in flight and sweeps its
leftovers.  It can die or be replaced at any
time without touching the serving vswitchd (``reexec`` execs the installed ovsndu in
the same process).  It is the one place that runs the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from ovsndu import __version__, control_server
from ovsndu.config import Config
from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.ovs import daemon
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.unixctl import pid_alive
from ovsndu.systemd import lifecycle
from ovsndu.systemd import notify as sdnotify
from ovsndu.systemd.dbus import DbusService
from ovsndu.upgrade import binlogs
from ovsndu.upgrade.history import HistoryStore, UpgradeRecord, ensure_private_dir
from ovsndu.upgrade.keeper import StateKeeper
from ovsndu.upgrade.recovery import Recovery
from ovsndu.upgrade.runner import UpgradeRunner
from ovsndu.upgrade.serving import (
    Serving,
    binary_of,
    record_version,
    restore_original,
    spec_of,
    vswitchd_version,
    who_serves,
)

log = structlog.get_logger("ovsndu.supervisor")
MONITOR_INTERVAL = 0.1
"""Seconds between checks that the serving vswitchd lives (a crash is seen this fast)."""


class Supervisor:
    """Owns one vswitchd (as described by *cfg*) and its upgrades."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.spec = spec_of(cfg)
        self.state_dir = Path(cfg.ovsndu.state_dir)
        self.store = HistoryStore(self.state_dir, on_finish=lambda record: binlogs.attach(
            record, self.state_dir / "work" / record.id, self.spec.log_file))
        self.serving: Serving | None = None
        self.runner: UpgradeRunner | None = None
        self.phase = "starting"
        self.keeper = StateKeeper(self.spec)
        self.reexec = False
        self.released = False
        self.instance = os.urandom(6).hex()  # tells a re-executed supervisor from this one
        self.stopping = asyncio.Event()

    # --- life cycle --------------------------------------------------------------------------
    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; stop vswitchd on the way out."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop)
        lifecycle.clear_stopping(self.spec.rundir)
        ensure_private_dir(self.state_dir)
        await asyncio.to_thread(self.recover)
        await asyncio.to_thread(self.ensure_serving)
        await asyncio.to_thread(self.sweep)
        path = Path(self.cfg.ovsndu.control_socket)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(
            lambda r, w: control_server.handle(self, r, w), path=str(path))
        os.chmod(path, 0o600)
        self.phase = "idle"
        assert self.serving is not None
        log.info(
            "supervisor.ready",
            event_kind="ready",
            vswitchd_pid=self.serving.pid,
            version=self.serving.version,
            control_socket=str(path),
        )
        self.bus = await DbusService.start(self)
        sdnotify.notify(READY=1, MAINPID=os.getpid(), STATUS=self.status_line())
        monitor = asyncio.create_task(self._monitor())
        keeping = asyncio.create_task(self._keep_state())
        try:
            await self.stopping.wait()
        finally:
            monitor.cancel()
            keeping.cancel()
            server.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if self.reexec:
                sdnotify.notify(STATUS=f"re-executing ovsndu; {self.status_line()}")
            elif self.released:
                pass  # vswitchd is the unit's main process now: leave it running
            else:
                sdnotify.notify(STOPPING=1, STATUS="stopping")
                if self.runner_task is not None:
                    await asyncio.wait([self.runner_task], timeout=self.cfg.upgrade.timeout)
                await asyncio.to_thread(self.stop_vswitchd)
            if self.bus is not None:
                await self.bus.stop()
        log.info("supervisor.stopped", event_kind="reexec" if self.reexec else "stopped",
                 vswitchd_pid=self.serving.pid if self.serving else None)
        return 0

    def _request_stop(self) -> None:
        """SIGTERM/SIGINT: a requested stop (ExecStopPost then stops what is left)."""
        lifecycle.mark_stopping(self.spec.rundir)
        self.stopping.set()

    runner_task: asyncio.Task[UpgradeRecord] | None = None
    bus: DbusService | None = None

    def status_line(self) -> str:
        s = self.serving
        who = f"vswitchd pid {s.pid} ({s.version})" if s else "no vswitchd"
        return f"{self.phase}; {who}"

    def announce(self) -> None:
        """Tell systemd and D-Bus who serves now."""
        sdnotify.notify(STATUS=self.status_line())
        if self.bus is not None:
            self.bus.changed()

    def stop_vswitchd(self) -> None:
        """Stop the serving vswitchd the way ovs-ctl does (``exit``), SIGKILL if it hangs."""
        s = self.serving
        if s is None:
            return
        try:
            with daemon.unixctl_for(self.spec, s.pid, timeout=5) as appctl:
                appctl("exit")
        except VswitchdError:
            pass
        if not daemon.wait_gone(s.pid, 10, s.proc):
            daemon.kill(s.pid, s.proc)
        daemon.remove_stale_files(self.spec, s.pid)

    def ensure_serving(self) -> None:
        """Adopt the vswitchd named by the pidfile, or start the configured one."""
        pid = daemon.read_pid(self.spec.pidfile)
        if pid is not None and daemon.answers(self.spec, pid):
            self.serving = Serving(pid, None, binary_of(pid), vswitchd_version(self.spec, pid))
            log.info("supervisor.adopted", event_kind="adopted", vswitchd_pid=pid)
        else:
            self.serving = self._start_configured()
        self._clear_stale_frw()
        record_version(self.spec, self.serving.version)

    def _start_configured(self, binary: str = "") -> Serving:
        """Start *binary* (default: the configured one) as the serving vswitchd."""
        binary = binary or self.cfg.ovs.vswitchd
        proc = daemon.spawn(self.spec, binary)

        def ready() -> bool:
            if proc.poll() is not None:
                raise VswitchdError(f"{binary} exited at start with status {proc.returncode}")
            # Ready as ovs-ctl's start is: answering, with every bridge built.
            return daemon.answers(self.spec, proc.pid) and daemon.bridges_built(
                self.spec.rundir, self.spec.db, proc.pid)

        daemon.wait_until(ready, 30, "ovs-vswitchd to answer with its bridges built")
        log.info(
            "supervisor.started_vswitchd", event_kind="vswitchd_started", vswitchd_pid=proc.pid
        )
        return Serving(proc.pid, proc, binary, vswitchd_version(self.spec, proc.pid))

    def _clear_stale_frw(self) -> None:
        """Lift flow-restore-wait only if ovsndu set it (an upgrade cut short); one set by
        someone else (Debian's restart script restoring flows) is theirs to lift."""
        with Ovsdb(self.spec.db) as db:
            on, ours = db.flow_restore_wait()
            if ours:
                db.set_flow_restore_wait(False)
                log.warning(
                    "supervisor.cleared_flow_restore_wait",
                    event_kind="anomaly",
                    reason="flow-restore-wait set by an earlier ovsndu was left set; cleared",
                )
            elif on:
                log.info("supervisor.flow_restore_wait_left", event_kind="flow_restore_wait",
                         reason="flow-restore-wait is set by someone else; left for them")

    async def _monitor(self) -> None:
        """Restart vswitchd if it dies while no upgrade runs; ping the watchdog."""
        interval = sdnotify.watchdog_interval()
        pinged = 0.0
        while True:
            await asyncio.sleep(MONITOR_INTERVAL)
            if interval and time.monotonic() - pinged >= interval / 2:
                sdnotify.notify(WATCHDOG=1)
                pinged = time.monotonic()
            s = self.serving
            if self.runner is not None or s is None:
                continue
            dead = s.proc.poll() is not None if s.proc is not None else not pid_alive(s.pid)
            if dead:
                if s.proc is None:  # adopted, maybe our child since a reexec: reap it
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(s.pid, os.WNOHANG)
                log.warning(
                    "supervisor.vswitchd_died",
                    event_kind="anomaly",
                    vswitchd_pid=s.pid,
                    status=s.proc.returncode if s.proc else None,
                )
                daemon.remove_stale_files(self.spec, s.pid)
                try:
                    # Another vswitchd may hold the datapath (and the pidfile): adopt it
                    # rather than start one that would wait on its OVSDB lock forever.
                    # Else what served is what restarts (after `reload --vswitchd X`, X),
                    # with its last known state.
                    found = await asyncio.to_thread(who_serves, self.spec, [])
                    self.serving = found or await asyncio.to_thread(self._restart_with_state, s)
                except OvsnduError as exc:
                    log.error("supervisor.restart_failed", event_kind="anomaly", reason=str(exc))
                self.keeper.forget()
                self.announce()

    async def _keep_state(self) -> None:
        """Keep the serving vswitchd's last known state current (see keeper.py)."""
        while True:
            await asyncio.sleep(self.keeper.poll)
            s = self.serving
            if self.runner is not None or s is None or not pid_alive(s.pid):
                continue
            await asyncio.to_thread(self.keeper.tick, s.pid)

    def _restart_with_state(self, dead: Serving) -> Serving:
        """Start the binary that was serving again, with the last known state restored
        before it forwards (flow-restore-wait); without it if there is none or it fails."""
        binary = dead.binary or self.cfg.ovs.vswitchd
        snap, started = self.keeper.snapshot, time.monotonic()
        if snap is not None:
            age = round(started - self.keeper.taken_at, 1)
            try:
                restored = restore_original(self.spec, binary, snap,
                                            tcp_seq_check=self.cfg.upgrade.tcp_seq_check,
                                            read_at=self.keeper.taken_at)
            except OvsnduError as exc:
                log.error("supervisor.restore_failed", event_kind="anomaly", binary=binary,
                          reason=str(exc), snapshot_age_s=age)
                self._kill_pidfile_owner()
            else:
                log.warning("supervisor.vswitchd_restored", event_kind="vswitchd_restored",
                            vswitchd_pid=restored.pid, binary=binary, snapshot_age_s=age,
                            seconds=round(time.monotonic() - started, 3),
                            entries=sum(snap.counts().values()))
                return restored
        with Ovsdb(self.spec.db) as db:
            db.set_flow_restore_wait(False)
        return self._start_configured(binary)

    def _kill_pidfile_owner(self) -> None:
        pid = daemon.read_pid(self.spec.pidfile)
        if pid is not None:
            daemon.kill(pid)
            daemon.remove_stale_files(self.spec, pid)

    # --- crash recovery (upgrade/recovery.py) -------------------------------------------------
    def recover(self) -> None:
        """Finish or roll back an upgrade a killed supervisor left in flight."""
        restored = Recovery(self.cfg, self.spec, self.store).run()
        if restored is not None:
            self.serving = restored

    def sweep(self) -> None:
        """Remove what interrupted upgrades left (no upgrade runs at start)."""
        Recovery(self.cfg, self.spec, self.store).sweep()

    # --- control socket -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What ``ovsndu status`` shows."""
        s = self.serving
        last = self.store.last()
        return {
            "phase": self.phase,
            "upgrade_id": self.runner.upgrade_id if self.runner else None,
            "supervisor_pid": os.getpid(),
            "supervisor_instance": self.instance,
            "ovsndu_version": __version__,
            "last_known_state": self._keeper_status(),
            "vswitchd": {"pid": s.pid, "version": s.version, "binary": s.binary} if s else None,
            "last_upgrade": last.to_dict() if last else None,
        }

    def _keeper_status(self) -> dict[str, Any] | None:
        k = self.keeper
        if k.snapshot is None:
            return None
        return {"vswitchd_pid": k.pid, "age_s": round(time.monotonic() - k.taken_at, 1),
                "entries": sum(k.snapshot.counts().values()), "snapshots": k.snapshots,
                "traffic_reads": k.traffic_reads,
                "traffic_every_s": round(k.traffic_every_s(), 1),
                "traffic_hold_ms": round(k.traffic_hold_s * 1000, 1)}

    def upgrade_done(self, task: asyncio.Task[UpgradeRecord]) -> None:
        if self.runner is not None:
            self.serving = self.runner.serving
        self.runner, self.runner_task, self.phase = None, None, "idle"
        if self.bus is not None:
            self.bus.changed()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "supervisor.upgrade_crashed", event_kind="anomaly", reason=repr(task.exception())
            )
        elif not task.cancelled():
            rec = task.result()
            for anomaly in rec.anomalies:  # each one its own journal entry
                log.warning("upgrade.anomaly", event_kind="anomaly", upgrade_id=rec.id,
                            outcome=rec.outcome, reason=anomaly)
        sdnotify.notify(READY=1, STATUS=self.status_line())


def supervise(cfg: Config) -> int:
    """Run the supervisor until it is told to stop; exec the installed ovsndu on reexec."""
    sup = Supervisor(cfg)
    code = asyncio.run(sup.run())
    if sup.reexec:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "ovsndu", *sys.argv[1:]])
    return code
