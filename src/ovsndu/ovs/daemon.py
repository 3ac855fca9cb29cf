"""Starting, watching and stopping ovs-vswitchd processes for the supervisor.

A serving vswitchd runs with the options ``ovs-ctl`` gives it, in the foreground,
in its own session (it must outlive a crashed supervisor).  A *standby* is a
second vswitchd on the same live database with its own pidfile: it waits on the
OVSDB lock ``ovs_vswitchd`` until the serving one goes away.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ovsndu.errors import OvsnduError, VswitchdError
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import read_bridges
from ovsndu.ovs.unixctl import Unixctl, pid_alive
from ovsndu.ovs.vlog import last_words

SYSTEM_RUNDIR = "/var/run/openvswitch"
STANDBY_PIDFILE = "ovs-vswitchd.standby.pid"


@dataclass(frozen=True, slots=True)
class VswitchdSpec:
    """Where and how vswitchd runs (from the [ovs] config section)."""

    rundir: Path
    db: str
    args: tuple[str, ...] = ()
    netns: str = ""

    @property
    def pidfile(self) -> Path:
        """The standard pidfile the OVS tools read."""
        return self.rundir / "ovs-vswitchd.pid"

    @property
    def standby_pidfile(self) -> Path:
        """The standby's own pidfile (renamed to :attr:`pidfile` when it takes over)."""
        return self.rundir / STANDBY_PIDFILE

    @property
    def log_file(self) -> Path:
        """``$OVS_LOGDIR`` or /var/log/openvswitch for the system, else the rundir."""
        if os.environ.get("OVS_LOGDIR"):
            return Path(os.environ["OVS_LOGDIR"]) / "ovs-vswitchd.log"
        if str(self.rundir) == SYSTEM_RUNDIR:
            return Path("/var/log/openvswitch/ovs-vswitchd.log")
        return self.rundir / "ovs-vswitchd.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment with ``OVS_RUNDIR`` pointing at the rundir."""
        return {**os.environ, "OVS_RUNDIR": str(self.rundir)}

    def argv(self, binary: str, *, standby: bool = False, db: str | None = None) -> list[str]:
        """The command line: ovs-ctl's options, the configured extras, our pidfile;
        *db*: the database remote if not the spec's (a standby that initialises DPDK
        first, :mod:`ovsndu.ovs.preinit`)."""
        pidfile = self.standby_pidfile if standby else self.pidfile
        # A standby waits on the OVSDB lock and says so at ERR ("another ovs-vswitchd
        # process is running"): its own log file only, syslog (the journal) once it serves.
        syslog = "-vsyslog:off" if standby else "-vsyslog:err"
        argv = [binary, db or self.db, "-vconsole:emer", syslog, "-vfile:info", "--no-chdir",
                f"--log-file={self.log_file}", f"--pidfile={pidfile}", *self.args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv


def as_ovs_vswitchd(rundir: Path, binary: str) -> str:
    """A path to *binary* whose file name is ``ovs-vswitchd``.

    OVS names its unixctl socket after its program name (``<name>.<pid>.ctl``), and the
    standard tools look for ``ovs-vswitchd.<pid>.ctl``: a binary installed or copied
    under another name is started through a symlink with the standard name.
    """
    if Path(binary).name == "ovs-vswitchd":
        return binary
    link_dir = rundir / ".ovsndu-bin" / hashlib.sha256(binary.encode()).hexdigest()[:12]
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "ovs-vswitchd"
    if not link.is_symlink() or os.readlink(link) != os.path.abspath(binary):
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.path.abspath(binary))
    return str(link)


def spawn(spec: VswitchdSpec, binary: str, *, standby: bool = False,
          stderr: int | IO[bytes] = subprocess.DEVNULL, ovs_rundir: Path | None = None,
          db: str | None = None) -> subprocess.Popen[bytes]:
    """Start vswitchd in the foreground, in its own session, stdout discarded.

    *ovs_rundir*: its ``OVS_RUNDIR`` if not the spec's (a private one, see
    :mod:`ovsndu.ovs.ofdir`); the pidfile and log file stay where the spec says.
    *db*: its database remote if not the spec's."""
    argv = spec.argv(as_ovs_vswitchd(spec.rundir, binary), standby=standby, db=db)
    env = spec.env if ovs_rundir is None else {**spec.env, "OVS_RUNDIR": str(ovs_rundir)}
    try:
        proc = subprocess.Popen(argv, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    except OSError as exc:
        raise VswitchdError(f"cannot start {binary}: {exc.strerror}") from None
    name = getattr(stderr, "name", None)
    if isinstance(name, str):
        _STDERR[proc.pid] = Path(name)
        while len(_STDERR) > 16:  # a long-lived supervisor: only recent ones matter
            del _STDERR[next(iter(_STDERR))]
    return proc


_STDERR: dict[int, Path] = {}
"""The file a vswitchd started by :func:`spawn` writes its stderr to, by PID."""


def stderr_file(pid: int) -> Path | None:
    """Where vswitchd *pid* (started by :func:`spawn` with a file) writes its stderr."""
    return _STDERR.get(pid)


def ended(proc: subprocess.Popen[bytes], what: str = "the new vswitchd") -> str:
    """``the new vswitchd exited with exit status 7; stderr: ...`` for a dead *proc*."""
    said = last_words(stderr_file(proc.pid), None)
    return f"{what} exited with {exit_description(proc.returncode)}" + (
        f"; {said}" if said else "")


def enable_syslog(spec: VswitchdSpec, pid: int) -> None:
    """A promoted standby logs to syslog at ERR from now on, as a serving vswitchd does."""
    with unixctl_for(spec, pid, timeout=5) as appctl:
        appctl("vlog/set", "syslog:err")


def exit_description(returncode: int | None) -> str:
    """``exit status 1`` or ``signal SIGSEGV`` for a Popen return code."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
        return f"signal {-returncode}"
    return f"exit status {returncode}"


def binary_version(binary: str, timeout: float = 10.0) -> str:
    """``BINARY --version``'s first line; VswitchdError if it is missing, crashes or hangs."""
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise VswitchdError(f"new binary {binary} does not exist") from None
    except PermissionError:
        raise VswitchdError(f"new binary {binary} is not executable") from None
    except subprocess.TimeoutExpired:
        raise VswitchdError(f"new binary {binary} hung on --version ({timeout:g} s)") from None
    except OSError as exc:
        raise VswitchdError(f"new binary {binary} cannot run: {exc.strerror}") from None
    first = proc.stdout.strip().splitlines()[:1]
    if proc.returncode != 0 or not first or "Open vSwitch" not in first[0]:
        why = f"exit status {proc.returncode}" if proc.returncode else "no version line"
        raise VswitchdError(f"new binary {binary} failed --version: {why}")
    # The program name is the file's name; report the standard one, as the tools will see it.
    return "ovs-vswitchd " + first[0][first[0].index("(Open vSwitch)"):].strip()


def unixctl_for(spec: VswitchdSpec, pid: int, timeout: float = 10.0) -> Unixctl:
    """A unixctl connection to vswitchd *pid*."""
    return Unixctl.for_daemon(spec.rundir, pid=pid, timeout=timeout)


def answers(spec: VswitchdSpec, pid: int) -> bool:
    """Whether vswitchd *pid* answers ``version`` on its unixctl socket."""
    try:
        with unixctl_for(spec, pid, timeout=2) as appctl:
            appctl("version")
    except VswitchdError:
        return False
    return True


def bridges_built(rundir: Path, db: str, pid: int, *, of_dir: Path | None = None) -> bool:
    """Whether vswitchd *pid* (of *rundir*; OpenFlow sockets in *of_dir*, by default the
    rundir) has built every bridge in *db*."""
    try:
        with Ovsdb(db, timeout=5) as conn:
            names = [b.name for b in read_bridges(conn)]
        with Unixctl.for_daemon(rundir, pid=pid, timeout=2) as appctl:
            shown = appctl("ofproto/list").split()
    except OvsnduError:
        return False
    return all(name in shown and ((of_dir or rundir) / f"{name}.mgmt").exists()
               for name in names)


def wait_bridges(spec: VswitchdSpec, proc: subprocess.Popen[bytes], names: list[str],
                 timeout: float, *, of_dir: Path | None = None) -> None:
    """Poll (every 2 ms) until *proc* answers OpenFlow on every bridge in *names* (its
    sockets in *of_dir*, by default the rundir)."""
    deadline = time.monotonic() + timeout
    of_dir = of_dir or spec.rundir
    while True:
        if proc.poll() is not None:
            raise VswitchdError(ended(proc))
        if all((of_dir / f"{n}.mgmt").exists() for n in names):
            try:
                with unixctl_for(spec, proc.pid, timeout=2) as appctl:
                    shown = appctl("ofproto/list").split()
            except VswitchdError:
                shown = []
            if all(n in shown for n in names):
                return
        if time.monotonic() > deadline:
            raise VswitchdError(f"timed out after {timeout:g} s waiting for the new "
                                f"vswitchd's bridges")
        time.sleep(0.002)


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.01) -> None:
    """Poll *predicate* (a callable) until true; VswitchdError naming *what* on timeout."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise VswitchdError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_gone(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until *pid* has exited (reaping it when it is our child); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return True
        if proc is None and not pid_alive(pid):
            return True
        time.sleep(0.002)
    return False


def kill(pid: int, proc: subprocess.Popen[bytes] | None = None, sig: int = signal.SIGKILL
         ) -> None:
    """Send *sig* to *pid* if alive (continuing it first if stopped) and reap a child."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        if sig != signal.SIGKILL:
            os.kill(pid, signal.SIGCONT)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    else:
        wait_gone(pid, 10)


def remove_stale_files(spec: VswitchdSpec, pid: int) -> None:
    """Sockets a dead vswitchd *pid* may leave behind (after SIGKILL)."""
    with contextlib.suppress(FileNotFoundError):
        (spec.rundir / f"ovs-vswitchd.{pid}.ctl").unlink()
    for path in (spec.pidfile, spec.standby_pidfile):
        with contextlib.suppress(OSError, ValueError):
            if int(path.read_text().strip()) == pid:
                path.unlink()


def read_pid(path: Path) -> int | None:
    """The PID in a pidfile if that process is alive, else None."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def ordered_takeover(spec: VswitchdSpec, old_pid: int, old_proc: subprocess.Popen[bytes] | None,
                     standby_pid: int, *, exit_timeout: float = 10.0) -> float:
    """Stop the serving vswitchd and let the standby take over, in a safe order.

    The old daemon releases the OVSDB lock before it has closed its devices, so the
    standby is stopped (SIGSTOP) first, the old one killed (SIGKILL: no userspace
    teardown, so its tens of thousands of rules are not freed one by one inside the
    gap; the datapath, taps and kernel state stay, as with ``exit`` without
    ``--cleanup``), and the standby continued only once the old PID is gone and its
    stale sockets removed.  Returns the monotonic time the old process was seen gone.
    """
    os.kill(standby_pid, signal.SIGSTOP)
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_pid, signal.SIGKILL)
        if not wait_gone(old_pid, exit_timeout, old_proc):
            raise VswitchdError(f"the old vswitchd {old_pid} did not die within "
                                f"{exit_timeout:g} s of SIGKILL")
        gone = time.monotonic()
        remove_stale_files(spec, old_pid)
        # Its OpenFlow sockets too: the standby must not be mistaken as ready by them.
        for sock in [*spec.rundir.glob("*.mgmt"), *spec.rundir.glob("*.snoop")]:
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
    finally:
        os.kill(standby_pid, signal.SIGCONT)
    return gone


def promote_standby_pidfile(spec: VswitchdSpec, standby_pid: int) -> None:
    """Rename the standby's pidfile to the standard one; its lock (on the inode) moves along."""
    if read_pid(spec.standby_pidfile) != standby_pid:
        raise VswitchdError(f"standby pidfile {spec.standby_pidfile} does not name {standby_pid}")
    os.replace(spec.standby_pidfile, spec.pidfile)


def running_binary(pid: int) -> str:
    """The executable of *pid* (``/proc/PID/exe``), readable even if the file was replaced."""
    return f"/proc/{pid}/exe"


def dp_types(db: str) -> dict[str, str]:
    """bridge → datapath type."""
    with Ovsdb(db) as conn:
        return {b.name: b.datapath_type for b in read_bridges(conn)}
