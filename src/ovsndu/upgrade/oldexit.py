"""The old vswitchd's exit hold within an upgrade (:mod:`ovsndu.ovs.exit_hold`).

Taken before the final read, while the old process still serves; the handover
releases it in a thread once forwarding has resumed, and waits for that at its end
(also after a failure).  Marks ``exit_hold.sockets`` and ``exit_hold.memory`` and the
journal's ``upgrade.exit_hold`` say what was held, and why not.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

import structlog

from ovsndu.ovs.exit_hold import ExitHold

if TYPE_CHECKING:
    from ovsndu.upgrade.runner import UpgradeRunner

log = structlog.get_logger("ovsndu.upgrade")


async def hold_old_exit(run: UpgradeRunner) -> ExitHold:
    """:func:`take` in a thread; a hold that arrives after the upgrade was cancelled is
    released (else the old process's memory would stay held until the supervisor ends)."""
    taking = asyncio.ensure_future(asyncio.to_thread(take, run, run.serving.pid))
    try:
        return await asyncio.shield(taking)
    except asyncio.CancelledError:
        taking.add_done_callback(_release_taken)
        raise


def _release_taken(taking: asyncio.Future[ExitHold]) -> None:
    if not taking.cancelled() and taking.exception() is None:
        release_in_background(taking.result())


def release_in_background(hold: ExitHold) -> None:
    """Drop the hold in a thread (the kernel frees what the old process left: tens of
    ms); :meth:`ExitHold.release` called again waits for it."""
    threading.Thread(target=hold.release, name="exit-hold-release").start()


def take(run: UpgradeRunner, pid: int) -> ExitHold:
    """Hold what the old process's death would free slowly; marks and the journal say
    what was held, and why not."""
    hold = ExitHold.take(pid)
    run.record.marks["exit_hold.sockets"] = float(len(hold.sockets))
    run.record.marks["exit_hold.memory"] = float(hold.memory_held)
    log.info("upgrade.exit_hold", upgrade_id=run.upgrade_id, phase="handover",
             event_kind="exit_hold", old_pid=pid, sockets=len(hold.sockets),
             memory=hold.memory_held, **({"reason": "; ".join(hold.notes)} if hold.notes
                                         else {}))
    return hold
