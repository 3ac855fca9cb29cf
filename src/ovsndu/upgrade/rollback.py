"""Rollback: back to the original vswitchd, and proof by read-back of who serves.

When the original still runs and answers, the upgrade is discarded (standby killed,
hidden sockets and schema put back, :func:`discard_verify`); when it is gone or frozen,
it is started again from the binary copied at preflight and the snapshot (or the final
catch-up) restored into it; if even that fails, :func:`serve_empty` makes sure some
vswitchd serves, without the state.  Functions of an
:class:`~ovsndu.upgrade.runner.UpgradeRunner`, whose ``serving`` they update.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.model.carried import CONTROL_PLANE, check_carried
from ovsndu.ovs import daemon, ofdir
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.unixctl import pid_alive
from ovsndu.ovs.verify import user_routes_only
from ovsndu.render import entry_text
from ovsndu.upgrade.handover import set_frw
from ovsndu.upgrade.serving import Serving, restore_original, vswitchd_version

if TYPE_CHECKING:
    from ovsndu.upgrade.runner import UpgradeRunner

log = structlog.get_logger("ovsndu.upgrade")

UNRESPONSIVE_WAIT = 5.0
"""Seconds a living original vswitchd may take to answer before a rollback replaces it."""


async def roll_back(run: UpgradeRunner, mode: str, reason: str) -> None:
    """Return to the original process, and prove it by read-back."""
    log.warning(
        "upgrade.rollback",
        upgrade_id=run.upgrade_id,
        phase="rollback",
        event_kind="rollback_started",
        mode=mode,
        reason=reason,
    )
    if run.session is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run.session.abort(reason[:500]), 5)
    if run.client is not None and run.client.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            run.client.kill()
        await run.client.wait()
    if run.last is not None:  # stopped for its final read, followed: let it go on
        problem = await asyncio.to_thread(run.last.release)
        run.last = None
        if problem is None:
            run.record.ct_frozen = {}
        else:
            run.record.anomalies.append(problem)
            log.error("upgrade.ct_still_frozen", upgrade_id=run.upgrade_id,
                      phase="rollback", event_kind="anomaly", reason=problem)
    original_alive = run.serving.pid == run.record.from_pid and (
        run.serving.proc.poll() is None
        if run.serving.proc is not None
        else pid_alive(run.serving.pid)
    )
    if run.standby is not None:
        # How the new binary ended goes into the record (ovsndu.upgrade.binlogs).
        ended = run.standby.poll()
        await asyncio.to_thread(daemon.kill, run.standby.pid, run.standby)
        run.record.vswitchd_logs.setdefault("standby", {})["exit"] = (
            daemon.exit_description(ended) if ended is not None
            else "still running, killed by the rollback")
        await asyncio.to_thread(daemon.remove_stale_files, run.spec, run.standby.pid)
    if original_alive and run.snapshot is not None and not await asyncio.to_thread(
            answers_within, run, run.serving.pid, UNRESPONSIVE_WAIT):
        # Frozen (SIGSTOP, a hang): it cannot serve; replace it from the snapshot.
        why = (f"the original vswitchd {run.serving.pid} did not answer within "
               f"{UNRESPONSIVE_WAIT:g} s; replaced from the snapshot")
        run.record.anomalies.append(why)
        log.warning("upgrade.original_unresponsive", upgrade_id=run.upgrade_id,
                    phase="rollback", event_kind="anomaly", reason=why)
        await asyncio.to_thread(daemon.kill, run.serving.pid, run.serving.proc)
        await asyncio.to_thread(daemon.remove_stale_files, run.spec, run.serving.pid)
        original_alive = False
    if run.hidden is not None:
        if original_alive:
            await asyncio.to_thread(run.hidden.unhide)
        else:
            await asyncio.to_thread(run.hidden.remove)
    await asyncio.to_thread(ofdir.remove_unused, run.spec.rundir)
    await asyncio.to_thread(run.schema.revert,
                            run.serving.pid if original_alive else None)
    if original_alive:
        await asyncio.to_thread(discard_verify, run)
        return
    if run.snapshot is None:
        raise VswitchdError("the original vswitchd is gone and no snapshot was taken")
    binary = run.record.rollback_binary or run.serving.binary

    def started(serving: Serving) -> None:
        serving.binary = run.record.from_binary or binary
        run.serving = serving
        run.on_serving(serving)

    try:
        restored = await asyncio.to_thread(
            restore_original,
            run.spec,
            binary,
            run.final or run.snapshot,  # what it held when it stopped
            tcp_seq_check=run.cfg.upgrade.tcp_seq_check,
            read_at=run._final_read_at or run._snapshot_read_at,
            on_started=started,
        )
    except OvsnduError as exc:
        await asyncio.to_thread(serve_empty, run, binary)
        raise VswitchdError(f"restoring the snapshot failed ({exc}); {binary} serves "
                            f"without the state") from None
    run.frw_set = False
    restored.binary = run.record.from_binary or binary
    run.serving = restored
    run.on_serving(restored)
    run.record.to_pid = None
    log.warning(
        "upgrade.restored_original",
        upgrade_id=run.upgrade_id,
        phase="rollback",
        event_kind="rollback_restored",
        pid=restored.pid,
    )


def answers_within(run: UpgradeRunner, pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not daemon.answers(run.spec, pid):
        if time.monotonic() > deadline or not pid_alive(pid):
            return False
        time.sleep(0.1)
    return True


def serve_empty(run: UpgradeRunner, binary: str) -> None:
    """Last resort after a failed restore: someone serves, without the state."""
    pid = daemon.read_pid(run.spec.pidfile)
    if pid is not None:
        daemon.kill(pid)
        daemon.remove_stale_files(run.spec, pid)
    with Ovsdb(run.spec.db) as db:
        db.set_flow_restore_wait(False)
    proc = daemon.spawn(run.spec, binary)
    daemon.wait_until(lambda: proc.poll() is None and daemon.answers(run.spec, proc.pid),
                      30, f"{binary} to answer")
    run.serving = Serving(proc.pid, proc, run.record.from_binary or binary,
                           vswitchd_version(run.spec, proc.pid))
    run.on_serving(run.serving)


def discard_verify(run: UpgradeRunner) -> None:
    """The original never stopped: it answers and still holds the datapath.

    ovsndu writes nothing to a serving vswitchd before the handover, so its state is
    whatever its controllers and traffic made it: control-plane changes since the
    snapshot are recorded (anomalies), not failures; traffic state is not compared.
    """
    if run.frw_set:
        set_frw(run, False)
    if not daemon.answers(run.spec, run.serving.pid):
        raise VswitchdError(f"the original vswitchd {run.serving.pid} does not answer")
    if daemon.read_pid(run.spec.pidfile) != run.serving.pid:
        raise VswitchdError(f"{run.spec.pidfile} does not name the original vswitchd "
                            f"{run.serving.pid}")
    if run.snapshot is None:
        return
    now = read_snapshot(run.spec.rundir, run.spec.db, pid=run.serving.pid)
    for lost in check_carried(user_routes_only(run.snapshot), user_routes_only(now),
                              categories=CONTROL_PLANE):
        run.record.anomalies.append(
            f"{lost.category} of the original vswitchd changed during the upgrade "
            f"(not by ovsndu): {lost.describe(entry_text)}")
