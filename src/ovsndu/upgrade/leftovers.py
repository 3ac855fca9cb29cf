"""What an interrupted upgrade leaves behind, and sweeping it away.

An upgrade owns, for its lifetime: the client process, its work directory (token, log,
the path of its rehearsal sandbox), the rehearsal sandbox under ``/tmp``, the snapshot
file, the rollback copy of the running binary, the sync socket and (a DPDK build's
standby, for about a second) a private ovsdb-server (ovs/dpdk_preinit.py).  The runner
removes them when the upgrade ends; a supervisor that was killed cannot, so the next
one calls :func:`sweep` after recovery (no upgrade runs then).  A process is killed
only when its command line proves it is ours (PIDs are reused).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from ovsndu.ovs import dpdk_preinit
from ovsndu.ovs.procs import cmdline, pids_where

CLIENT_MODULE = b"ovsndu.upgrade.client"
REHEARSAL_FILE = "rehearsal"
REHEARSAL_PREFIX = "ovsndu-rehearsal-"


def kill_client(pid: int | None) -> bool:
    """SIGKILL an upgrade client *pid* if that PID still is one; whether it was."""
    if not pid or CLIENT_MODULE not in cmdline(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def clients_of(state_dir: Path) -> list[int]:
    """Live client processes whose work directory is under *state_dir*."""
    work = str(state_dir / "work").encode()
    return pids_where(lambda argv: CLIENT_MODULE in argv
                      and any(a.startswith(work) for a in argv))


def remove_workdir(upgrade: Path) -> list[str]:
    """Remove one upgrade's work directory and the rehearsal sandbox its client named there
    (the client may have been killed before it could); what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        rehearsal = Path((upgrade / REHEARSAL_FILE).read_text().strip())
        if rehearsal.name.startswith(REHEARSAL_PREFIX) and rehearsal.is_dir():
            shutil.rmtree(rehearsal, ignore_errors=True)
            removed.append(str(rehearsal))
    if upgrade.exists():
        shutil.rmtree(upgrade, ignore_errors=True)
        removed.append(str(upgrade))
    return removed


def sweep(state_dir: Path) -> list[str]:
    """Remove every upgrade's leftovers under *state_dir* (no upgrade may be running).

    Kills orphaned clients, removes rehearsal sandboxes they named, work directories,
    rollback copies, snapshot files, temporary in-flight files and stale sync sockets.
    Returns what it removed, one item per thing, for the log.
    """
    removed: list[str] = []
    for pid in clients_of(state_dir):
        if kill_client(pid):
            removed.append(f"client pid {pid}")
    for pid in dpdk_preinit.orphans(state_dir):  # found by its command line: ours
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            removed.append(f"private ovsdb-server pid {pid}")
    work = state_dir / "work"
    for upgrade in sorted(work.iterdir()) if work.is_dir() else []:
        removed += remove_workdir(upgrade)
    rollback = state_dir / "rollback"
    for copy in sorted(rollback.iterdir()) if rollback.is_dir() else []:
        shutil.rmtree(copy, ignore_errors=True)
        removed.append(str(copy))
    patterns = ("*.snapshot.json", ".inflight.json.*.tmp", "sync/*.sock")
    for path in sorted(p for pattern in patterns for p in state_dir.glob(pattern)):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(str(path))
    return removed
