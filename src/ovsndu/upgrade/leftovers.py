"""What an interrupted upgrade leaves behind, and sweeping it away.

An upgrade owns, for its lifetime: the client process, its work directory (token, log,
the path of its rehearsal sandbox), the rehearsal sandbox under ``/tmp``, the snapshot
file, the rollback copy of the running binary, the sync socket and (the standby, for
about a second) a private ovsdb-server and, on a plain build, the tap of the datapath it
creates to measure the TSC (ovs/preinit.py).  The runner
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

from ovsndu.ovs import preinit
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


def _is_vswitchd(pid: int) -> bool:
    argv = cmdline(pid)
    return bool(argv) and b"ovs-vswitchd" in argv[0]


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


def sweep(state_dir: Path, netns: str = "") -> list[str]:
    """Remove every upgrade's leftovers under *state_dir* (no upgrade may be running).

    Kills orphaned clients, removes rehearsal sandboxes they named, work directories,
    rollback copies, snapshot files, temporary in-flight files, stale sync sockets and
    the taps of TSC datapaths in *netns* (vswitchd's network namespace) whose standby
    is gone.
    Returns what it removed, one item per thing, for the log.
    """
    removed: list[str] = []
    for pid in clients_of(state_dir):
        if kill_client(pid):
            removed.append(f"client pid {pid}")
    for pid in preinit.orphans(state_dir):  # found by its command line: ours
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            removed.append(f"private ovsdb-server pid {pid}")
    for name in preinit.stale_taps(netns, _is_vswitchd):  # named after a standby that is gone
        if preinit.remove_tap(name, netns):
            removed.append(f"tap {name}")
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
