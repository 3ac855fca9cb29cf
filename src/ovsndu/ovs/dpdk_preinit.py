"""The standby of a DPDK build initialises DPDK before the handover, on a private database.

In OVS 3.1 ``dpdk_init()`` runs in ``bridge_run()`` only once the process holds the OVSDB
lock, so a standby waiting on the live database's lock initialises DPDK's EAL (~150 ms
here, ~100 ms of it DPDK's TSC measurement) after the old process is gone: inside the
handover gap.  Instead the standby's database remote is ``unix:<rundir>/.of-<id>.db.sock``
(beside its private ``OVS_RUNDIR``, :mod:`ovsndu.ovs.ofdir`), a symlink that first points
to a *private* ovsdb-server (files in the upgrade's work directory) serving a database
whose only row is ``Open_vSwitch`` with the live row's ``other_config``
(``flow-restore-wait`` forced on: vswitchd stops reading it once it has seen it false)
and no bridge.  The standby takes that lock at once and initialises DPDK (seen when it
answers the unixctl commands DPDK registers); then (:meth:`Preinit.switch`) the symlink
is atomically pointed at the live database's socket and the private server killed: the
standby reconnects at once (the link is named twice, :attr:`Preinit.remote`), finds the
lock held and waits like any standby, with DPDK initialised.  The symlink stays for the
life of the process (it reconnects through it when ovsdb-server restarts);
:mod:`ovsndu.ovs.ofdir` removes it with the private rundir.

What the standby wrote into the private database (``cur_cfg``, ``dpdk_initialized``, the
types, statistics) dies with it; the live database sees only what it writes after the
takeover, as any new process.  Done only when it is safe (:func:`why_not`): the standby's
ofproto layer is initialised from the private database too, with no bridge, so its "port
hints" are empty — harmless for userspace (netdev) datapaths, which start empty in every
process, but a kernel datapath's ports would be deleted when the standby opens it; and
EAL must not probe PCI devices the serving process holds (``--no-pci``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.ovs.ovsdb import DB, Ovsdb, socket_path
from ovsndu.ovs.procs import pids_where
from ovsndu.ovs.readers import read_bridges

#: The work-directory subdirectory of the private database and its server.
SUBDIR = "dpdk-preinit"
#: The last unixctl command OVS 3.1 registers once DPDK is initialised (lib/dpdk.c): the
#: main loop answers unixctl after the bridge_run() that initialised it.
INITIALISED_COMMAND = "dpdk/get-malloc-stats"
#: What a standby logs once it finds the live database's lock held (bridge.c, at ERR).
CONTENDED = "another ovs-vswitchd process is running, disabling this process (pid {pid})"


def why_not(db: str, binary: str) -> str | None:
    """None when the standby of *binary* on *db* may initialise DPDK early, else why not."""
    if not db.startswith("unix:"):
        return f"the database remote {db} is not a unix socket"
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "the new binary does not answer --version"
    if "\nDPDK " not in version:
        return "the new binary is not a DPDK build"
    try:
        with Ovsdb(db, timeout=10) as conn:
            (row,) = conn.select("Open_vSwitch", ["other_config"])
            bridges = read_bridges(conn)
    except (OvsnduError, ValueError) as exc:
        return f"cannot read the database: {exc}"
    other = row["other_config"]
    if other.get("dpdk-init") != "true":
        # "try": a failed initialisation would not be told from a slow one.
        return "other_config:dpdk-init is not true"
    if "--no-pci" not in other.get("dpdk-extra", "").split():
        return "DPDK may probe PCI devices that the serving process holds (no --no-pci)"
    kernel = sorted(b.name for b in bridges if b.datapath_type != "netdev")
    if kernel:
        return f"bridges on a kernel datapath ({', '.join(kernel)})"
    return None


def _tool(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0 or (argv[1] == "transact" and '"error"' in proc.stdout):
        raise VswitchdError(f"DPDK pre-initialisation: cannot {what}: "
                            + (proc.stderr.strip() or proc.stdout.strip())[:300])
    return proc.stdout


@dataclass
class Preinit:
    """One standby's private database, its server, and the symlink it is given."""

    db: str  # the live database's remote
    link: Path  # the standby's remote is unix:<link>
    workdir: Path  # files of the private database and server
    socket: Path  # the private server's socket (a short path: AF_UNIX limits it)
    server: subprocess.Popen[bytes] | None = None
    marks: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, db: str, link: Path, workdir: Path, socket: Path) -> Preinit:
        """Copy the live ``Open_vSwitch`` row's ``other_config`` into a new private
        database (files in *workdir*), serve it on *socket* and point *link* at it."""
        self = cls(db, link, workdir / SUBDIR, socket)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        db = self.db
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        db_file, schema = self.workdir / "conf.db", self.workdir / "schema"
        with Ovsdb(db, timeout=10) as conn:
            (row,) = conn.select("Open_vSwitch", ["other_config"])
        other = {**row["other_config"], "flow-restore-wait": "true"}
        schema.write_text(_tool(["ovsdb-client", "get-schema", db, DB], "read the schema"))
        _tool(["ovsdb-tool", "create", str(db_file), str(schema)], "create the database")
        _tool(["ovsdb-tool", "transact", str(db_file), json.dumps(
            [DB, {"op": "insert", "table": "Open_vSwitch",
                  "row": {"other_config": ["map", sorted(other.items())]}}])],
              "write the database")
        try:
            self.server = subprocess.Popen(
                ["ovsdb-server", str(db_file), f"--remote=punix:{self.socket}",
                 f"--unixctl={self.workdir / 'ovsdb-server.ctl'}", "--no-chdir",
                 "-vconsole:off", "-vsyslog:off"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise VswitchdError(f"DPDK pre-initialisation: cannot start ovsdb-server: "
                                f"{exc.strerror}") from None
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise VswitchdError("DPDK pre-initialisation: the private ovsdb-server "
                                    "did not start")
            time.sleep(0.005)
        self._point(self.socket)

    @property
    def remote(self) -> str:
        """The database remote the standby is given: the link, named twice.  OVS gives a
        session as many reconnections without backoff as it has remotes (lib/jsonrpc.c,
        lib/reconnect.c): with one, the reconnection after the private server goes away
        waits OVS's 1 s minimum backoff; with two, the first is immediate (later ones, as
        after an ovsdb-server restart, back off as usual)."""
        return f"unix:{self.link},unix:{self.link}"

    def _point(self, target: Path | str) -> None:
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, self.link)

    def switch(self) -> None:
        """Point the link at the live database and end the private server (the standby's
        connection drops and it reconnects through the link)."""
        self._point(socket_path(self.db))
        self.close()

    def close(self) -> None:
        """Kill the private server (our child) and remove its files; the link is the
        private rundir's (:meth:`ovsndu.ovs.ofdir.PrivateRundir.discard`)."""
        if self.server is not None and self.server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.server.wait(timeout=10)
        with contextlib.suppress(OSError):
            self.socket.unlink()
        for path in sorted(self.workdir.glob("*"), reverse=True):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.workdir.rmdir()


def contended(log_file: Path, offset: int, pid: int) -> bool:
    """Whether vswitchd *pid* logged, after byte *offset* of *log_file*, that it found the
    OVSDB lock held by another process (it is connected to the live database)."""
    try:
        with open(log_file, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return False
    return CONTENDED.format(pid=pid) in text


def pmd_cpus(pid: int) -> set[int]:
    """The CPUs the PMD threads of vswitchd *pid* may run on (they busy-poll)."""
    cpus: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "comm").read_text().startswith("pmd"):
                cpus |= os.sched_getaffinity(int(task.name))
        except (OSError, ValueError):
            continue
    return cpus


def keep_off_pmds(pid: int, serving_pid: int) -> set[int] | None:
    """Keep the new vswitchd *pid* off the serving process's PMD cores while it initialises
    DPDK; the CPU set to give back afterwards (:func:`give_back`), None if unchanged.

    EAL pins its control threads to the CPUs its process may use minus its lcore (OVS
    gives ``-l`` the lowest allowed CPU): on a 2-core host the other core, where the
    serving process's PMD thread spins; EAL's main thread waits for each control thread
    to start there, and under load that took 1–50 s (docs/performance.md).  With the PMD
    cores taken out, the control threads share the lcore's CPU.  Not done when the lowest
    CPU is a PMD core (``-l`` would change) or nothing would be left."""
    allowed = os.sched_getaffinity(0)
    pmd = pmd_cpus(serving_pid)
    narrow = allowed - pmd
    if not pmd or not narrow or min(allowed) in pmd:
        return None
    try:
        os.sched_setaffinity(pid, narrow)
    except OSError:
        return None
    return allowed


def give_back(pid: int, cpus: set[int]) -> None:
    """Every thread of *pid* may run on *cpus* again (EAL's control threads included:
    they stay where a normally started process would let them run, not pinned)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(int(task.name), cpus)


def log_size(log_file: Path) -> int:
    """The current size of *log_file* (0 if missing)."""
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def orphans(state_dir: Path) -> list[int]:
    """Private ovsdb-servers of upgrades under *state_dir* whose supervisor died."""
    mark = str(state_dir / "work").encode()
    return pids_where(lambda argv: argv[0].endswith(b"ovsdb-server") and any(
        a.startswith(mark) and f"/{SUBDIR}/".encode() in a for a in argv[1:]))
