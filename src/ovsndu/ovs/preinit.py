"""The standby does its slow first-time initialisation before the handover, on a private
database: DPDK's EAL on a DPDK build, the TSC estimate on a plain build.

In OVS 3.1 a standby waiting on the live database's OVSDB lock does nothing until it
holds it, so two one-off costs land in the handover gap, after the old process is gone:

- a DPDK build's ``dpdk_init()`` (EAL, ~150 ms here, ~100 ms of it DPDK's TSC
  measurement) runs in ``bridge_run()`` only with the lock (kind ``"dpdk"``);
- a plain build measures the TSC frequency for 100 ms (``pmd_perf_estimate_tsc_frequency``,
  a ``nanosleep`` on the main thread) when it creates its first userspace datapath,
  once per process (lib/dpif-netdev.c ``create_dp_netdev``), i.e. at the takeover's
  first bridge (kind ``"tsc"``).

Instead the standby's database remote is ``unix:<rundir>/.of-<id>.db.sock`` (beside its
private ``OVS_RUNDIR``, :mod:`ovsndu.ovs.ofdir`), a symlink that first points to a
*private* ovsdb-server (files in the upgrade's work directory) serving a database whose
only row is ``Open_vSwitch`` with the live row's ``other_config`` (``flow-restore-wait``
forced on: vswitchd stops reading it once it has seen it false) and no bridge.  The
standby takes that lock at once; then DPDK initialises (seen when it answers the unixctl
commands DPDK registers), or, on a plain build, ovsndu has it create and delete a
userspace datapath of its own (``dpctl/add-dp``/``del-dp netdev@ndutsc<pid>``: the
estimate runs then; the datapath's local port is a tap of that name in the host's
network namespace for that ~0.1 s, removed with it, and by ovsndu if not).  Then
(:meth:`Preinit.switch`) the symlink is atomically pointed at the live database's socket
and the private server killed: the standby reconnects at once (the link is named twice,
:attr:`Preinit.remote`), finds the lock held and waits like any standby, initialised.
The symlink stays for the life of the process (it reconnects through it when
ovsdb-server restarts); :mod:`ovsndu.ovs.ofdir` removes it with the private rundir.

What the standby wrote into the private database (``cur_cfg``, ``dpdk_initialized``, the
types, statistics) dies with it; the live database sees only what it writes after the
takeover, as any new process.  Done only when it is safe (:func:`decide`): the standby's
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.ovs.ovsdb import DB, Ovsdb, socket_path
from ovsndu.ovs.procs import pids_where
from ovsndu.ovs.readers import read_bridges
from ovsndu.ovs.unixctl import Unixctl

#: The work-directory subdirectory of the private database and its server.
SUBDIR = "preinit"
#: The last unixctl command OVS 3.1 registers once DPDK is initialised (lib/dpdk.c): the
#: main loop answers unixctl after the bridge_run() that initialised it.
INITIALISED_COMMAND = "dpdk/get-malloc-stats"
#: What a standby logs once it finds the live database's lock held (bridge.c, at ERR).
CONTENDED = "another ovs-vswitchd process is running, disabling this process (pid {pid})"


#: A plain build's standby has these unixctl commands once it holds the (private) lock.
LOCKED_COMMAND = "dpctl/add-dp"
#: The prefix of the datapath (and its tap) a plain build's standby creates to measure the
#: TSC: ``ndutsc<pid>`` fits IFNAMSIZ.
TSC_DP_PREFIX = "ndutsc"


def decide(db: str, binary: str) -> tuple[str | None, str]:
    """What the standby of *binary* on *db* initialises early — ``"dpdk"`` or ``"tsc"``
    and ``""`` — or None and why not."""
    if not db.startswith("unix:"):
        return None, f"the database remote {db} is not a unix socket"
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, "the new binary does not answer --version"
    try:
        with Ovsdb(db, timeout=10) as conn:
            (row,) = conn.select("Open_vSwitch", ["other_config"])
            bridges = read_bridges(conn)
    except (OvsnduError, ValueError) as exc:
        return None, f"cannot read the database: {exc}"
    kernel = sorted(b.name for b in bridges if b.datapath_type != "netdev")
    if kernel:
        return None, f"bridges on another datapath than netdev ({', '.join(kernel)})"
    other = row["other_config"]
    dpdk_init = other.get("dpdk-init", "false")
    if "\nDPDK " in version and dpdk_init != "false":
        if dpdk_init != "true":
            # "try": a failed initialisation would not be told from a slow one.
            return None, f"other_config:dpdk-init is {dpdk_init!r}, not true"
        if "--no-pci" not in other.get("dpdk-extra", "").split():
            return None, ("DPDK may probe PCI devices that the serving process holds "
                          "(no --no-pci)")
        return "dpdk", ""
    if not bridges:  # the estimate runs at the first userspace bridge, whenever it comes
        return None, "no bridge: the new process creates no datapath at the takeover"
    return "tsc", ""


def tsc_datapath(pid: int) -> str:
    """The name of the datapath (and tap) standby *pid* creates to measure the TSC."""
    return f"{TSC_DP_PREFIX}{pid}"


def measure_tsc(appctl: Unixctl, pid: int, netns: str = "") -> None:
    """Have standby *pid* (holding the private lock; in network namespace *netns*, ""
    for the host's) create and delete a userspace datapath, which runs its one TSC
    estimate; its tap must be gone afterwards."""
    name = tsc_datapath(pid)
    appctl("dpctl/add-dp", f"netdev@{name}")
    try:
        appctl("dpctl/del-dp", f"netdev@{name}")
    finally:
        remove_tap(name, netns)


def _ip(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *(("-n", netns) if netns else ()), *argv],
                          capture_output=True, text=True, timeout=10, check=False)


def remove_tap(name: str, netns: str = "") -> bool:
    """Delete the tap *name* in *netns* if it is still there (the datapath's deletion
    removes it); whether it was there."""
    if _ip(netns, "link", "show", "dev", name).returncode != 0:
        return False
    _ip(netns, "link", "del", "dev", name)
    return True


def stale_taps(netns: str, alive: Callable[[int], bool]) -> list[str]:
    """Taps in *netns* of TSC datapaths whose standby is gone (*alive* tells a live PID)."""
    names = []
    for line in _ip(netns, "-o", "link", "show").stdout.splitlines():
        fields = line.split(":")
        name = fields[1].strip().split("@")[0] if len(fields) > 1 else ""
        digits = name.removeprefix(TSC_DP_PREFIX)
        if name.startswith(TSC_DP_PREFIX) and digits.isdigit() and not alive(int(digits)):
            names.append(name)
    return sorted(names)


def _tool(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0 or (argv[1] == "transact" and '"error"' in proc.stdout):
        raise VswitchdError(f"standby pre-initialisation: cannot {what}: "
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
        except OSError as exc:  # e.g. a full disk: the ordinary standby then
            self.close()
            raise VswitchdError(f"standby pre-initialisation: {exc}") from None
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
            raise VswitchdError(f"standby pre-initialisation: cannot start ovsdb-server: "
                                f"{exc.strerror}") from None
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise VswitchdError("standby pre-initialisation: the private ovsdb-server "
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
