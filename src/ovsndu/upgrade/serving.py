"""The serving vswitchd: which process holds the datapath, how to start one with a snapshot.

Shared by the runner (rollback) and the supervisor (start, crash recovery).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ovsndu.config import Config
from ovsndu.model import Snapshot
from ovsndu.ovs import daemon
from ovsndu.ovs.daemon import VswitchdSpec
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
    spec: VswitchdSpec, binary: str, snap: Snapshot, *, tcp_seq_check: bool
) -> Serving:
    """Start *binary* as the serving vswitchd (flow-restore-wait on), restore *snap*, verify."""
    with Ovsdb(spec.db) as db:
        db.set_other_config("flow-restore-wait", "true")
    proc = daemon.spawn(spec, binary)
    daemon.wait_until(
        lambda: proc.poll() is None and daemon.bridges_built(spec.rundir, spec.db, proc.pid),
        30,
        f"{binary} to build its bridges",
    )
    Restorer(spec.rundir, spec.db, pid=proc.pid, tcp_seq_check=tcp_seq_check
             ).restore_and_release(snap, fresh=True)
    version = vswitchd_version(spec, proc.pid)
    record_version(spec, version)
    return Serving(proc.pid, proc, binary, version)
