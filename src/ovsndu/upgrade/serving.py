"""The serving vswitchd: which process holds the datapath, how to start one with a snapshot.

Shared by the runner (rollback) and the supervisor (start, crash recovery).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ovsndu.config import Config
from ovsndu.model import Snapshot
from ovsndu.ovs import daemon
from ovsndu.ovs.daemon import VswitchdSpec
from ovsndu.ovs.ofdir import PrivateRundir
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.restore import Restorer


@dataclass
class Serving:
    """The vswitchd that currently holds the datapath."""

    pid: int
    proc: subprocess.Popen[bytes] | None
    binary: str
    version: str = ""


def spec_of(cfg: Config) -> VswitchdSpec:
    """The vswitchd spec of a config."""
    return VswitchdSpec(
        Path(cfg.ovs.rundir), cfg.ovs.db, tuple(cfg.ovs.vswitchd_args), cfg.ovs.netns
    )


def vswitchd_version(spec: VswitchdSpec, pid: int) -> str:
    """The running vswitchd's version line."""
    with daemon.unixctl_for(spec, pid) as appctl:
        return appctl("version").splitlines()[0].strip()


def record_version(spec: VswitchdSpec, version_line: str) -> None:
    """Write the version number of a version line into ``Open_vSwitch.ovs_version``."""
    with Ovsdb(spec.db) as db:
        db.set_ovs_version(version_line.rsplit(maxsplit=1)[-1])


def snapshot_path(state_dir: Path, upgrade_id: str) -> Path:
    """Where the snapshot of an in-flight upgrade is kept (crash recovery restores it)."""
    return state_dir / f"{upgrade_id}.snapshot.json"


def restore_original(
    spec: VswitchdSpec, binary: str, snap: Snapshot, *, tcp_seq_check: bool,
    read_at: float | None = None, on_started: Callable[[Serving], None] | None = None,
) -> Serving:
    """Start *binary* as the serving vswitchd (flow-restore-wait on), restore *snap*, verify.

    *on_started* learns of the new process as soon as it exists, so that whoever tracks
    the serving vswitchd names it even if the restore then fails.  Its OpenFlow sockets
    stay private (:mod:`ovsndu.ovs.ofdir`) until the restore is verified — or has failed:
    then controllers are let in to repair what they can."""
    with Ovsdb(spec.db) as db:
        db.set_flow_restore_wait(True)
    of_dir = PrivateRundir.create(spec.rundir)
    proc = daemon.spawn(spec, binary, ovs_rundir=of_dir.link)
    if on_started is not None:  # it holds the datapath from now on, whatever happens next
        on_started(Serving(proc.pid, proc, binary))
    try:
        daemon.wait_until(
            lambda: proc.poll() is None and of_dir.share_ctl(proc.pid) and daemon.bridges_built(
                spec.rundir, spec.db, proc.pid, of_dir=of_dir.private),
            30,
            f"{binary} to build its bridges",
        )
        Restorer(spec.rundir, spec.db, pid=proc.pid, tcp_seq_check=tcp_seq_check,
                 of_dir=of_dir.private).restore_and_release(snap, fresh=True, read_at=read_at)
    finally:
        if proc.poll() is None:
            of_dir.publish()
        else:
            of_dir.discard()
    version = vswitchd_version(spec, proc.pid)
    record_version(spec, version)
    return Serving(proc.pid, proc, binary, version)


def binary_of(pid: int) -> str:
    """The path a process was started from (``(deleted)`` stripped)."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return ""


def who_serves(spec: VswitchdSpec, known: list[Serving]) -> Serving | None:
    """The vswitchd that serves now: the one the pidfile names, alive, answering, with
    its bridges built (a process still waiting on the OVSDB lock has none).

    One of *known* when it is that process (its Popen kept), else a new record; None
    when no process qualifies.
    """
    pid = daemon.read_pid(spec.pidfile)
    if pid is None or not daemon.answers(spec, pid):
        return None
    if not daemon.bridges_built(spec.rundir, spec.db, pid):
        return None
    for s in known:
        if s.pid == pid:
            if not s.version:
                s.version = vswitchd_version(spec, pid)
            return s
    return Serving(pid, None, binary_of(pid), vswitchd_version(spec, pid))
