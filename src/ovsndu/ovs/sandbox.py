"""A private Open vSwitch: ovsdb-server + ovs-vswitchd in their own run directory.

Used by the tests, the demo and the benchmarks.  The dummy datapath (default)
touches no kernel interface; ``datapath="netdev"`` runs the whole instance in a
fresh network namespace so its taps (``ovs-netdev``, internal ports) and any
veths made for traffic vanish with the namespace.  Children get
``PR_SET_PDEATHSIG`` so they die with the creating process, and namespaces
left by a dead creator are swept on the next start: nothing leaks when a test
fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from ovsndu.errors import SandboxError, VswitchdError
from ovsndu.ovs.ofctl import ofctl
from ovsndu.ovs.unixctl import Unixctl, pid_alive
from ovsndu.ovs.vlog import last_words

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
NETNS_PREFIX = "ovsndu-"
DUMMY_ARGS = ("--enable-dummy=override", "--disable-system", "--disable-system-route")
NETDEV_ARGS = ("--disable-system",)
_counter = itertools.count()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def sweep_stale_namespaces() -> list[str]:
    """Delete ``ovsndu-<pid>-N`` namespaces whose creating process is gone."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir("/run/netns"):
            if not name.startswith(NETNS_PREFIX):
                continue
            try:
                owner = int(name[len(NETNS_PREFIX) :].split("-")[0])
            except ValueError:
                continue
            if not pid_alive(owner):
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
                removed.append(name)
    return removed


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Poll *predicate* until true; SandboxError naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def backup_db(db: str, dest: str | Path) -> Path:
    """A consistent copy of the database at remote *db* (``ovsdb-client backup``)."""
    dest = Path(dest)
    proc = subprocess.run(
        ["ovsdb-client", "backup", db], capture_output=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise SandboxError(
            f"cannot copy the database: ovsdb-client backup: {proc.stderr.decode().strip()}"
        )
    dest.write_bytes(proc.stdout)
    return dest


class Sandbox:
    """One private OVS instance; use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        rundir: str | Path | None = None,
        *,
        datapath: Literal["dummy", "netdev"] = "dummy",
        vswitchd: str = "ovs-vswitchd",
        vswitchd_args: Sequence[str] = (),
        schema: str = SCHEMA,
        db_file: str | Path | None = None,
    ):
        self._own_rundir = rundir is None
        self.rundir = Path(rundir or tempfile.mkdtemp(prefix="ovsndu-sandbox-"))
        self.datapath = datapath
        self.vswitchd_binary = vswitchd
        self.vswitchd_args = tuple(vswitchd_args)
        self.schema = schema
        self.db_file = Path(db_file) if db_file else self.rundir / "conf.db"
        self.netns: str | None = None
        self._on_stop: list[Callable[[], None]] = []  # e.g. endpoints to delete
        self.ovsdb_proc: subprocess.Popen[bytes] | None = None
        self.vswitchd_proc: subprocess.Popen[bytes] | None = None

    # --- paths ---------------------------------------------------------------------------
    @property
    def db_sock(self) -> Path:
        """ovsdb-server's Unix socket."""
        return self.rundir / "db.sock"

    @property
    def db(self) -> str:
        """The OVSDB remote, ``unix:<rundir>/db.sock``."""
        return f"unix:{self.db_sock}"

    @property
    def vswitchd_pid(self) -> int:
        """The serving vswitchd's PID: ours while it runs, else whoever the pidfile names."""
        if self.vswitchd_proc is not None and self.vswitchd_proc.poll() is None:
            return self.vswitchd_proc.pid
        try:
            pid = int((self.rundir / "ovs-vswitchd.pid").read_text().strip())
        except (OSError, ValueError):
            raise SandboxError("vswitchd is not running") from None
        if not pid_alive(pid):
            raise SandboxError(f"vswitchd is not running (stale pidfile names {pid})")
        return pid

    @property
    def unixctl_path(self) -> Path:
        """The vswitchd's unixctl socket."""
        return self.rundir / f"ovs-vswitchd.{self.vswitchd_pid}.ctl"

    def mgmt_path(self, bridge: str) -> Path:
        """A bridge's OpenFlow management socket."""
        return self.rundir / f"{bridge}.mgmt"

    @property
    def env(self) -> dict[str, str]:
        """Environment pointing every OVS tool at this sandbox."""
        env = dict(os.environ)
        for var in ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"):
            env[var] = str(self.rundir)
        return env

    def ns_argv(self, argv: Sequence[str]) -> list[str]:
        """*argv*, run inside the sandbox's namespace when it has one."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    # --- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Create the database, start both daemons, wait until vswitchd answers."""
        sweep_stale_namespaces()
        self.rundir.mkdir(parents=True, exist_ok=True)
        if self.datapath == "netdev":
            self.netns = f"{NETNS_PREFIX}{os.getpid()}-{next(_counter)}"
            self._run(["ip", "netns", "add", self.netns])
            self._run(self.ns_argv(["ip", "link", "set", "lo", "up"]))
        if not self.db_file.exists():
            self._run(["ovsdb-tool", "create", str(self.db_file), self.schema])
        self.start_ovsdb()
        self._run(["ovs-vsctl", "-vsyslog:off", f"--db={self.db}", "--no-wait", "init"])
        self.start_vswitchd()

    def start_ovsdb(self) -> None:
        """Start ovsdb-server on the sandbox database."""
        self.ovsdb_proc = self._spawn(
            [
                "ovsdb-server",
                str(self.db_file),
                f"--remote=punix:{self.db_sock}",
                # Its log file only, never the journal of a unit: syslog off before
                # --log-file, which already logs ("opened log file").
                "-vsyslog:off",
                f"--pidfile={self.rundir / 'ovsdb-server.pid'}",
                f"--log-file={self.rundir / 'ovsdb-server.log'}",
                "-vconsole:off",
            ],
            "ovsdb-server",
        )
        wait_for(
            lambda: self._alive(self.ovsdb_proc, "ovsdb-server") and _accepts(self.db_sock),
            10,
            "ovsdb-server's socket",
        )

    def vswitchd_argv(
        self, binary: str | None = None, *, pidfile: str | None = None, log_file: str | None = None
    ) -> list[str]:
        """The vswitchd command line this sandbox uses."""
        from ovsndu.ovs.daemon import as_ovs_vswitchd

        mode_args = DUMMY_ARGS if self.datapath == "dummy" else NETDEV_ARGS
        return [
            as_ovs_vswitchd(self.rundir, binary or self.vswitchd_binary),
            self.db,
            "-vsyslog:off",  # before --log-file, which already logs
            f"--pidfile={pidfile or self.rundir / 'ovs-vswitchd.pid'}",
            f"--log-file={log_file or self.rundir / 'ovs-vswitchd.log'}",
            "-vconsole:off",
            *mode_args,
            *self.vswitchd_args,
        ]

    def start_vswitchd(self) -> None:
        """Start ovs-vswitchd and wait until its unixctl answers ``version``; a SandboxError
        names how it ended (or that it still runs) and its last words (:mod:`ovs.vlog`)."""
        self.vswitchd_proc = self._spawn(self.ns_argv(self.vswitchd_argv()), "ovs-vswitchd")
        try:
            wait_for(self._vswitchd_ready, 20, "ovs-vswitchd to answer on unixctl")
        except SandboxError as exc:
            if self.vswitchd_proc is None or self.vswitchd_proc.poll() is not None:
                raise
            said = self.last_words("ovs-vswitchd")
            raise SandboxError(f"{exc} (it is still running" + (f"; {said})" if said else ")")
                               ) from None

    def last_words(self, name: str) -> str:
        """The last stderr lines and the last log complaint of daemon *name*."""
        return last_words(self.rundir / f"{name}.stderr", self.rundir / f"{name}.log")

    def _vswitchd_ready(self) -> bool:
        if not self._alive(self.vswitchd_proc, "ovs-vswitchd"):
            return False
        if not self.unixctl_path.exists():
            return False
        try:
            with Unixctl(str(self.unixctl_path), timeout=2) as appctl:
                appctl("version")
        except VswitchdError:
            return False
        from ovsndu.ovs.daemon import bridges_built

        return bridges_built(self.rundir, self.db, self.vswitchd_pid)

    def _alive(self, proc: subprocess.Popen[bytes] | None, name: str) -> bool:
        if proc is None or proc.poll() is not None:
            from ovsndu.ovs.daemon import exit_description

            said = self.last_words(name)
            how = exit_description(proc.returncode) if proc is not None else "not started"
            raise SandboxError(f"{name} exited early with {how}" + (f"; {said}" if said else ""))
        return True

    def restart_vswitchd(self, *, flow_restore_wait: bool = False) -> None:
        """``ovs-appctl exit`` (no cleanup: taps stay), then start a new vswitchd."""
        if flow_restore_wait:
            self.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
        with contextlib.suppress(VswitchdError):
            self.appctl("exit")
        if self.vswitchd_proc is not None:
            try:
                self.vswitchd_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.vswitchd_proc.kill()
                self.vswitchd_proc.wait()
        self.start_vswitchd()

    def stop_vswitchd(self, *, sig: int = signal.SIGTERM) -> None:
        """Stop this sandbox's vswitchd (if running) and wait for it."""
        _terminate(self.vswitchd_proc, sig)
        self.vswitchd_proc = None

    def stop(self) -> None:
        """Stop both daemons, delete the namespace and (if ours) the run directory.

        A vswitchd someone else started on this sandbox (a supervisor, ``ovs-ctl``) and
        still named by the pidfile is killed too: nothing outlives the sandbox.
        """
        self.stop_vswitchd()
        self._kill_foreign_vswitchd()
        _terminate(self.ovsdb_proc, signal.SIGTERM)
        self.ovsdb_proc = None
        while self._on_stop:
            self._on_stop.pop()()
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)
            self.netns = None
        if self._own_rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def copy_db(self, dest: str | Path) -> Path:
        """A consistent copy of the live database (``ovsdb-client backup``) at *dest*."""
        return backup_db(self.db, dest)

    def on_stop(self, cleanup: Callable[[], None]) -> None:
        """Run *cleanup* when the sandbox stops (before its namespace is deleted)."""
        self._on_stop.append(cleanup)

    def _kill_foreign_vswitchd(self) -> None:
        try:
            pid = int((self.rundir / "ovs-vswitchd.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        # A standby that initialised DPDK first reaches the database through a symlink
        # beside its private rundir (ovs/preinit.py).
        ours = self.db.encode() in cmdline or any(
            a.startswith(f"unix:{self.rundir}/.of-".encode()) for a in cmdline)
        if ours and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- tools ---------------------------------------------------------------------------
    def vsctl(self, *args: str) -> str:
        """``ovs-vsctl`` on the sandbox database (waits for vswitchd to apply)."""
        return self._run(["ovs-vsctl", "-vsyslog:off", f"--db={self.db}", "--timeout=30",
                          *args])

    def appctl(self, command: str, *args: str) -> str:
        """A unixctl command to the sandbox's vswitchd."""
        with Unixctl(str(self.unixctl_path)) as appctl:
            return appctl(command, *args)

    def ofctl(
        self,
        bridge: str,
        *args: str,
        version: str = "OpenFlow15",
        options: tuple[str, ...] = (),
        input_text: str | None = None,
    ) -> str:
        """``ovs-ofctl -O VERSION OPTIONS CMD <bridge mgmt> ARGS``."""
        return ofctl(self.rundir, bridge, version, *args, extra=options, input_text=input_text)

    def run(self, argv: Sequence[str], *, check: bool = True) -> str:
        """Run a command inside the sandbox's namespace (or here, without one)."""
        return self._run(self.ns_argv(argv), check=check)

    def _run(self, argv: Sequence[str], *, check: bool = True) -> str:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env, check=False, timeout=120
        )
        if check and proc.returncode != 0:
            reason = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[:1]
            raise SandboxError(
                f"{' '.join(argv[:4])}...: {reason[0] if reason else proc.returncode}"
            )
        return proc.stdout

    def _spawn(self, argv: Sequence[str], name: str) -> subprocess.Popen[bytes]:
        """Start daemon *name*, its stderr to ``<rundir>/<name>.stderr``."""
        try:
            with open(self.rundir / f"{name}.stderr", "wb") as stderr:
                return subprocess.Popen(
                    list(argv),
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    preexec_fn=_die_with_parent,
                )
        except OSError as exc:
            raise SandboxError(f"cannot start {argv[0]}: {exc.strerror}") from None


def _accepts(path: Path) -> bool:
    """Whether a Unix socket exists and accepts connections (bound is not yet listening)."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _terminate(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
