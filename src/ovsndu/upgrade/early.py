"""The early phases of an upgrade: preflight, the snapshot, and the client's launch.

Functions of an :class:`~ovsndu.upgrade.runner.UpgradeRunner` (as
:mod:`ovsndu.upgrade.handover` for the later ones), whose attributes they update:
:func:`preflight` checks what must hold before anything changes (the new binary runs,
the datapaths are supported, the schema step is planned, nobody else's
flow-restore-wait, a rollback copy of the running binary); :func:`take_snapshot` reads
the serving vswitchd (after converting the database when the target needs it) and names
what cannot be carried; :func:`run_client` starts the client and streams it the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import structlog

from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.model import Snapshot
from ovsndu.ovs import daemon, uncarried
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.restore import USERSPACE_DATAPATHS
from ovsndu.protocol.transport import serve_state
from ovsndu.upgrade.handover import last_lines
from ovsndu.upgrade.history import write_private, write_snapshot
from ovsndu.upgrade.serving import snapshot_path, vswitchd_version

if TYPE_CHECKING:
    from ovsndu.upgrade.runner import UpgradeRunner

log = structlog.get_logger("ovsndu.upgrade")

SUPPORTED_DATAPATHS = ("netdev", "system", "dummy")


async def preflight(run: UpgradeRunner) -> None:
    """New binary runs; datapaths supported; schema readable; rollback copy taken."""
    if run.inflight_error is not None:
        raise VswitchdError(f"cannot start an upgrade: {run.inflight_error}")
    if run.serving.proc is not None and run.serving.proc.poll() is not None:
        raise VswitchdError("the serving vswitchd is not running")
    run.record.to_version = await asyncio.to_thread(daemon.binary_version, run.new_binary)
    run.record.from_version = await asyncio.to_thread(
        vswitchd_version, run.spec, run.serving.pid
    )
    types = await asyncio.to_thread(daemon.dp_types, run.spec.db)
    for bridge, dp_type in sorted(types.items()):
        if dp_type not in SUPPORTED_DATAPATHS:
            raise VswitchdError(
                f"bridge {bridge} has datapath type {dp_type!r}; "
                f"supported: {', '.join(SUPPORTED_DATAPATHS)}"
            )
    await asyncio.to_thread(_check_schema, run)
    await asyncio.to_thread(_check_flow_restore_wait, run)
    copy = run.state_dir / "rollback" / run.upgrade_id / "ovs-vswitchd"
    copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        await asyncio.to_thread(shutil.copyfile, daemon.running_binary(run.serving.pid), copy)
    except OSError as exc:
        raise VswitchdError(f"cannot copy the running binary for rollback: {exc}") from None
    copy.chmod(0o755)
    run.record.rollback_binary = str(copy)

def _check_flow_restore_wait(run: UpgradeRunner) -> None:
    """ovsndu lifts flow-restore-wait only when it set it: refuse while someone else's
    is set (a restart script restoring flows), the handover would lift it early."""
    with Ovsdb(run.spec.db) as db:
        on, ours = db.flow_restore_wait()
    if on and not ours:
        raise VswitchdError("flow-restore-wait is set, not by ovsndu (a restart restoring "
                            "flows?); try again once it is cleared")

def _check_schema(run: UpgradeRunner) -> None:
    """One Open_vSwitch row; the schema the target needs against the database's and
    ``_Server``'s (see :mod:`ovsndu.upgrade.conversion`)."""
    with Ovsdb(run.spec.db) as db:
        rows = db.select("Open_vSwitch", ["ovs_version"])
    if len(rows) != 1:
        raise VswitchdError(f"the database has {len(rows)} Open_vSwitch rows, expected 1")
    run.schema.plan(run.schema_file)

async def take_snapshot(run: UpgradeRunner) -> None:
    """Convert the database if the target needs it (the serving vswitchd reconnected),
    then read every category of the serving vswitchd (the rules the keeper's snapshot
    holds, when the switch describes them byte for byte, are not printed and parsed
    again); keep it on disk for crash recovery."""
    try:
        await asyncio.to_thread(run.schema.apply, run.serving.pid)
        started = time.monotonic()
        snap = await asyncio.to_thread(
            read_snapshot, run.spec.rundir, run.spec.db, pid=run.serving.pid, known=run.known
        )
        run._snapshot_read_at = started
    except OvsnduError:  # refused: leave the database as it was
        await asyncio.to_thread(run.schema.revert, run.serving.pid)
        raise
    finally:
        run.known = None
    run.snapshot = snap
    run.on_snapshot(run.serving.pid, snap, started)
    run.record.counts, run.record.digests = snap.counts(), snap.digests()
    await asyncio.to_thread(note_uncarried, run, snap)
    # The crash-recovery file is written once the state is streamed to the client
    # (start_snapshot_file): until the handover a supervisor that dies needs no snapshot
    # (recovery then leaves the old process), and written beside the stream it took the
    # GIL from the event loop that streams (300k entries: seconds more for the client).


def start_snapshot_file(run: UpgradeRunner) -> None:
    """Write the crash-recovery snapshot file in a worker, once: encoded as it is written
    (one json.dumps of 300k entries held ~0.5 GiB and the event loop for seconds); not
    awaited here (seconds at 300k entries): the standby's start waits for it."""
    if run._snapshot_file is None and run.snapshot is not None:
        path = snapshot_path(run.state_dir, run.upgrade_id)
        run._snapshot_file = asyncio.ensure_future(asyncio.to_thread(write_snapshot, path,
                                                                      run.snapshot))

def note_uncarried(run: UpgradeRunner, snap: Snapshot, *, refuse: bool = True) -> None:
    """Name and count what cannot be carried (each entry once); refuse (before anything
    changes) when the configuration says so and *refuse* (the snapshot phase)."""
    types = daemon.dp_types(run.spec.db)
    found = uncarried.find_uncarried(snap, replay_conntrack=any(
        t in USERSPACE_DATAPATHS for t in types.values()))
    if refuse:
        uncarried.refuse_if_any(found, run.cfg.upgrade.uncarried)
    noted = set(run.record.anomalies)
    found = tuple(u for u in found if u.line() not in noted)
    for category, n in uncarried.counts(found).items():
        run.record.uncarried[category] = run.record.uncarried.get(category, 0) + n
    for u in found:
        run.record.anomalies.append(u.line())
        log.warning("upgrade.uncarried", upgrade_id=run.upgrade_id, event_kind="anomaly",
                    category=u.category, reason=u.reason)

async def run_client(run: UpgradeRunner) -> None:
    """Launch the client and stream it the state; it acknowledges after its rehearsal."""
    assert run.snapshot is not None
    sync_dir = run.state_dir / "sync"
    sync_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(sync_dir, 0o700)
    token = secrets.token_bytes(32)
    token_file = run._workdir / "token"
    run._workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(token_file, token)
    sock = sync_dir / f"{run.upgrade_id.rsplit('-', 1)[-1]}.sock"
    argv = [
        sys.executable,
        "-m",
        "ovsndu.upgrade.client",
        "--socket",
        str(sock),
        "--token-file",
        str(token_file),
        "--rundir",
        str(run.spec.rundir),
        "--db",
        run.spec.db,
        "--vswitchd",
        run.new_binary,
        "--workdir",
        str(run._workdir),
        "--of-dir",
        str(run.of_dir.private),
        "--timeout",
        str(run.timeout),
        "--validate" if run.cfg.upgrade.validate else "--no-validate",
    ]
    if run.cfg.upgrade.tcp_seq_check:
        argv.append("--tcp-seq-check")
    with open(run._workdir / "client.log", "wb") as client_log:
        run.client = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=client_log)
    run.record.client_pid = run.client.pid
    run._write_inflight()
    serving = asyncio.ensure_future(serve_state(
        sock,
        run.snapshot,
        token,
        expected_uid=os.getuid(),
        expected_pid=run.client.pid,
        vswitchd_versions=[run.record.from_version],
        accept_timeout=30,
        on_sent=lambda: start_snapshot_file(run),
    ))
    # A client that dies before it connects is seen at once, not after accept_timeout.
    exited = asyncio.ensure_future(run.client.wait())
    try:
        await asyncio.wait({serving, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    if serving.cancelled():
        said = last_lines(run._workdir / "client.log")
        raise VswitchdError(f"the client exited with "
                            f"{daemon.exit_description(run.client.returncode)} before "
                            f"it connected" + (f": {said}" if said else ""))
    run.session = serving.result().session
