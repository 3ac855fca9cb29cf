"""The live database's schema: read it, back it up, convert it online, make clients see it.

The adapter around :mod:`ovsndu.ovs.schema` (pure).  What it knows about OVS:

* ``ovsdb-client convert`` converts a standalone database online (~10 ms) and its
  connected clients survive it, but ovsdb-server keeps advertising the old schema in
  ``_Server.Database`` — where IDL clients such as ovs-vswitchd take theirs from.
  ``ovsdb-server/remove-db`` + ``ovsdb-server/add-db`` through ovsdb-server's unixctl
  refreshes it; every client is disconnected and reconnects after its backoff.
* A vswitchd has caught up when ``cur_cfg`` reaches a ``next_cfg`` bumped after the
  refresh (what ``ovs-vsctl`` waits for): then it is connected again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovsndu.errors import OvsdbError, VswitchdError
from ovsndu.ovs.jsonrpc import JsonRpcClient
from ovsndu.ovs.ovsdb import DB, Ovsdb, decode, socket_path
from ovsndu.ovs.schema import Schema, missing_columns
from ovsndu.ovs.unixctl import Unixctl, pid_alive

SCHEMA_NAME = "vswitch.ovsschema"


def read_schema_file(path: str | Path) -> tuple[Schema, dict[str, Any]]:
    """A ``.ovsschema`` file parsed, and its raw JSON."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise OvsdbError(f"cannot read schema {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise OvsdbError(f"schema {path} is not JSON: {exc}") from None
    return Schema.from_json(raw), raw


def schema_beside(binary: str) -> Path | None:
    """The schema file an installation of *binary* ships, if one is found beside it.

    ``PREFIX/sbin/ovs-vswitchd`` and ``PREFIX/lib/openvswitch-switch/ovs-vswitchd`` →
    ``PREFIX/share/openvswitch/vswitch.ovsschema``; an unpacked tree with the binary in
    ``DIR/bin`` → ``DIR/vswitch.ovsschema``.
    """
    here = Path(binary).resolve().parent
    for candidate in (here.parent / SCHEMA_NAME,
                      here.parent / "share" / "openvswitch" / SCHEMA_NAME,
                      here.parent.parent / "share" / "openvswitch" / SCHEMA_NAME):
        if candidate.is_file():
            return candidate
    return None


def live_schema(db: str) -> tuple[Schema, dict[str, Any]]:
    """The schema the database has (``get_schema``), parsed and raw."""
    with JsonRpcClient(socket_path(db), timeout=10, error=OvsdbError) as rpc:
        raw = rpc.call("get_schema", [DB])
    return Schema.from_json(raw), raw


def advertised_version(db: str) -> str:
    """The schema version ovsdb-server advertises for the database in ``_Server``."""
    with JsonRpcClient(socket_path(db), timeout=10, error=OvsdbError) as rpc:
        result = rpc.call("transact", ["_Server", {
            "op": "select", "table": "Database", "where": [["name", "==", DB]],
            "columns": ["schema"]}])
    try:
        schema = decode(result[0]["rows"][0]["schema"])
        return str(json.loads(schema if isinstance(schema, str) else schema[0])["version"])
    except (LookupError, TypeError, ValueError) as exc:
        raise OvsdbError(f"_Server does not advertise {DB}'s schema: {exc!r}") from None


def values_in(db: str, live: Schema, target: Schema) -> dict[str, list[dict[str, Any]]]:
    """The rows of every table with a column *target* lacks (those columns only)."""
    wanted: dict[str, list[str]] = {}
    for table, col in missing_columns(live, target):
        wanted.setdefault(table, [])
        if col != "*":
            wanted[table].append(col)
    with Ovsdb(db) as conn:
        return {table: conn.select(table, cols) for table, cols in wanted.items()}


def backup(db: str, dest: Path) -> Path:
    """``ovsdb-client backup`` of the live database into *dest* (mode 0600)."""
    proc = subprocess.run(["ovsdb-client", "backup", db, DB], capture_output=True,
                          check=False, timeout=60)
    if proc.returncode != 0:
        raise OvsdbError(f"ovsdb-client backup: {proc.stderr.decode().strip()[:200]}")
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.write_bytes(proc.stdout)
    dest.chmod(0o600)
    return dest


def convert(db: str, schema_file: Path) -> None:
    """``ovsdb-client convert``: the live database to *schema_file*'s schema, online."""
    proc = subprocess.run(["ovsdb-client", "convert", db, str(schema_file)],
                          capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise OvsdbError(f"ovsdb-client convert to {schema_file}: "
                         f"{proc.stderr.strip()[:300] or proc.returncode}")


@dataclass(frozen=True, slots=True)
class OvsdbServer:
    """The running ovsdb-server behind a database socket: its unixctl and database file."""

    pid: int
    ctl: Path
    db_file: Path

    @classmethod
    def find(cls, rundir: Path) -> OvsdbServer:
        """The ovsdb-server named by ``<rundir>/ovsdb-server.pid``."""
        try:
            pid = int((rundir / "ovsdb-server.pid").read_text().strip())
        except (OSError, ValueError):
            raise OvsdbError(f"no ovsdb-server pidfile in {rundir}") from None
        if not pid_alive(pid):
            raise OvsdbError(f"ovsdb-server {pid} (from its pidfile) is not running")
        ctl = rundir / f"ovsdb-server.{pid}.ctl"
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError as exc:
            raise OvsdbError(f"cannot read ovsdb-server {pid}'s command line: {exc}") from None
        files = [a for a in argv[1:] if a and not a.startswith("-")]
        for f in files:
            if _db_name(f) == DB:
                return cls(pid, ctl, Path(f))
        raise OvsdbError(f"ovsdb-server {pid} serves no {DB} database file ({files})")

    def refresh(self, pause: tuple[int, ...] = (), before: Callable[[], None] | None = None
                ) -> float:
        """``remove-db`` + ``add-db``: ``_Server`` advertises the current schema; seconds.

        The processes in *pause* (the serving vswitchd) are stopped meanwhile: an IDL
        client that looks for the database between the two commands finds none and
        backs off for a second (its main thread, which polls netdev ports, does no
        bridge work then); stopped, it resumes after ``add-db`` and re-reads ``_Server``
        in a few milliseconds without reconnecting.  *before* runs first, inside the
        pause (a downgrade conversion: a client that monitors columns the converted
        database lacks would otherwise fail and back off the same way).
        """
        t0 = time.monotonic()
        with paused(pause):
            if before is not None:
                before()
            with Unixctl(str(self.ctl), timeout=30) as appctl:
                appctl("ovsdb-server/remove-db", DB)
                try:
                    appctl("ovsdb-server/add-db", str(self.db_file))
                except VswitchdError:  # the database must come back: one more try
                    time.sleep(0.1)
                    appctl("ovsdb-server/add-db", str(self.db_file))
        return time.monotonic() - t0


@contextlib.contextmanager
def paused(pids: tuple[int, ...]) -> Iterator[None]:
    """SIGSTOP *pids* for the block, SIGCONT them after (whatever happens)."""
    stopped = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _db_name(path: str) -> str:
    proc = subprocess.run(["ovsdb-tool", "db-name", path], capture_output=True, text=True,
                          check=False, timeout=30)
    return proc.stdout.strip()


def wait_vswitchd_caught_up(db: str, timeout: float) -> float:
    """Bump ``next_cfg`` and wait until vswitchd reports it in ``cur_cfg``; seconds."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    target: int | None = None
    while True:
        try:
            with Ovsdb(db, timeout=5) as conn:
                if target is None:
                    conn.transact({"op": "mutate", "table": "Open_vSwitch", "where": [],
                                   "mutations": [["next_cfg", "+=", 1]]})
                    (row,) = conn.select("Open_vSwitch", ["next_cfg"])
                    target = int(row["next_cfg"])
                (row,) = conn.select("Open_vSwitch", ["cur_cfg"])
                if int(row["cur_cfg"]) >= target:
                    return time.monotonic() - t0
        except OvsdbError:
            pass  # the server is between remove-db and add-db: retry
        if time.monotonic() > deadline:
            raise OvsdbError(f"ovs-vswitchd did not reconnect to the database within "
                             f"{timeout:g} s of the schema refresh")
        time.sleep(0.01)
