"""A real systemd booted as PID 1 in a systemd-nspawn container, driven with nsenter.

The container's root is a throwaway overlay of the host's own ``/`` (upper layer on a
tmpfs): it boots in about a second, needs no debootstrap and no cache, and holds the
host's Debian openvswitch-switch, dbus, systemd and this checkout's ``.venv`` (the
package under test).  Host units that have no business in the container are masked in
the upper layer, the OVS database and ovsndu's state start empty, and the ovsndu
drop-in is installed into the container's ``/etc`` by ``ovsndu install-systemd --root``
before it boots.  Works where the host's PID 1 is not systemd (``--register=no
--keep-unit``, own cgroup), see docs in /work/shared/reference/systemd.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 90.0
CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")
KEEP_WANTED = {"openvswitch-switch.service", "remote-fs.target", "machines.target"}
MASK = (
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "systemd-pstore.service",
    "systemd-timesyncd.service", "postgresql.service",
    "getty@tty1.service", "console-getty.service", "systemd-networkd-wait-online.service",
    "networking.service", "ifupdown-pre.service", "ssh.service", "cron.service",
)
CONFIG = """\
[ovs]
vswitchd = "{vswitchd}"
vswitchd_args = ["--enable-dummy=override", "--disable-system", "--disable-system-route"]

[upgrade]
timeout = 120
"""
VENV_BIN = Path(sys.executable).parent
OVSNDU = str(VENV_BIN / "ovsndu")


def _outside_paths() -> list[str]:
    """Paths the container needs from the host that its overlay of / may hide (/tmp)."""
    repo = Path(__file__).resolve().parents[2]
    python = Path(sys.executable).resolve().parents[1]
    return sorted({str(p) for p in (repo, python) if str(p).startswith("/tmp/")})


def missing_prerequisite() -> str | None:
    """Why the container cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, mounts)"
    for tool in ("systemd-nspawn", "nsenter", "mount", "ovs-vswitchd", "ovsdb-server",
                 "dbus-daemon", "busctl", "journalctl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/setup installs systemd-container, dbus, OVS)"
    if not Path("/lib/systemd/systemd").exists():
        return "needs systemd installed (apt install systemd)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "needs overlayfs in the kernel"
    root_dev = os.stat("/").st_dev
    for path in (Path(sys.executable).resolve(), Path(__file__).resolve(), Path(OVSNDU)):
        if not path.exists() or os.stat(path).st_dev != root_dev:
            return f"needs {path} on the root filesystem (the container overlays /)"
    return None


class Container:
    """One booted container; use :func:`booted`."""

    def __init__(self, name: str, vswitchd: str = "/usr/sbin/ovs-vswitchd") -> None:
        self.name = name
        self.vswitchd = vswitchd
        self.base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
        self.merged = self.base / "merged"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.log = self.base / "nspawn.log"
        self._mounts: list[Path] = []
        self._cgroups: list[Path] = []
        self.boot_seconds = 0.0

    # --- set-up ------------------------------------------------------------------------------
    def _mount(self, *argv: str) -> None:
        subprocess.run(["mount", *argv], check=True, capture_output=True, text=True)
        self._mounts.append(Path(argv[-1]))

    def prepare(self) -> None:
        """Tmpfs, overlay of /, masks, fresh OVS database and ovsndu state, the drop-in."""
        self._mount("-t", "tmpfs", "-o", "size=2G,mode=0755", "tmpfs", str(self.base))
        for d in ("upper", "work", "merged"):
            (self.base / d).mkdir()
        self._mount("-t", "overlay", "overlay", "-o",
                    f"lowerdir=/,upperdir={self.base}/upper,workdir={self.base}/work",
                    str(self.merged))
        m = self.merged
        (m / "etc/hostname").write_text("ovsndu-ci\n")
        (m / "etc/machine-id").write_text("")
        system = m / "etc/systemd/system"
        masks = set(MASK)
        for wants in system.glob("*.wants"):
            masks |= {u.name for u in wants.iterdir() if u.name not in KEEP_WANTED
                      and wants.name in ("multi-user.target.wants", "timers.target.wants",
                                         "sysinit.target.wants")}
        for unit in masks:
            link = system / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")
        (m / "etc/default/openvswitch-switch").write_text('OVS_CTL_OPTS="--no-mlockall"\n')
        for stale in ("etc/openvswitch/conf.db", "etc/openvswitch/.conf.db.~lock~",
                      "var/lib/ovsndu", "etc/ovsndu", "var/log/journal"):
            p = m / stale
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        (m / "var/log/journal").mkdir(parents=True, exist_ok=True)
        (m / "etc/ovsndu").mkdir()
        self.write_config(self.vswitchd)
        subprocess.run([sys.executable, "-m", "ovsndu", "install-systemd", "--root", str(m)],
                       check=True, capture_output=True, text=True)

    def write_config(self, vswitchd: str) -> None:
        """The container's /etc/ovsndu/ovsndu.toml with *vswitchd* as the binary."""
        (self.merged / "etc/ovsndu/ovsndu.toml").write_text(CONFIG.format(vswitchd=vswitchd))

    def _own_cgroup(self) -> None:
        """Runs in the nspawn child: leave the caller's cgroups for our own."""
        for root in CGROUP_ROOTS:
            procs = Path(root) / f"ci-{self.name}" / "cgroup.procs"
            if procs.exists():
                procs.write_text("0\n")

    def boot(self) -> None:
        """Start nspawn and wait until systemd reports running (or degraded)."""
        for root in CGROUP_ROOTS:
            if Path(root, "cgroup.procs").exists():
                path = Path(root) / f"ci-{self.name}"
                path.mkdir(exist_ok=True)
                self._cgroups.append(path)
        started = time.monotonic()
        with open(self.log, "wb") as log:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", f"--directory={self.merged}",
                 f"--machine={self.name}", "--register=no", "--keep-unit",
                 "--private-network", "--console=passive",
                 "--capability=CAP_NET_ADMIN,CAP_IPC_LOCK",
                 # nspawn mounts a fresh tmpfs on /tmp: a checkout (and its .venv) there
                 # would vanish inside, so bind the checkout and the venv's Python in.
                 *(f"--bind-ro={p}" for p in _outside_paths())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=self._own_cgroup, env={"PATH": PATH, "LANG": "C.UTF-8"})
        deadline = started + BOOT_TIMEOUT
        while self.leader is None:
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nspawn did not start systemd: {self.log.read_text()[-3000:]}")
            self.leader = self._find_leader()
            time.sleep(0.05)
        private = Path(f"/proc/{self.leader}/root/run/systemd/private")
        while not private.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the container's systemd never opened its private socket")
            time.sleep(0.05)
        state = self.run("systemctl", "is-system-running", "--wait",
                         check=False, timeout=BOOT_TIMEOUT).stdout.strip()
        self.boot_seconds = time.monotonic() - started
        if state not in ("running", "degraded"):
            failed = self.run("systemctl", "--failed", "--no-pager", check=False).stdout
            raise RuntimeError(f"container state {state!r}: {failed}")

    def _find_leader(self) -> int | None:
        assert self.nspawn is not None
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
            pids = children.read_text().split()
        except OSError:
            return None
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return None

    # --- use ---------------------------------------------------------------------------------
    def argv(self, *cmd: str) -> list[str]:
        """*cmd* run inside the container, with a clean environment."""
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}",
                "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0", *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 120,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run *cmd* inside; CompletedProcess (AssertionError with its output if *check*)."""
        proc = subprocess.run(self.argv(*cmd), capture_output=True, text=True, timeout=timeout,
                              check=False, input=input_text)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of *unit*."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def python(self, code: str, *, timeout: float = 120) -> str:
        """Run Python *code* with the package's interpreter inside the container."""
        return self.run(sys.executable, "-c", code, timeout=timeout).stdout

    def ovsndu(self, *args: str, check: bool = True,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The ``ovsndu`` CLI inside."""
        return self.run(OVSNDU, *args, check=check, timeout=timeout)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file inside (through the host's view of the container's root)."""
        target = self.merged / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    # --- tear-down ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Halt the container (SIGTERM to nspawn, twice if needed), unmount, clean up."""
        nspawn, leader = self.nspawn, self.leader
        if nspawn is not None and nspawn.poll() is None:
            for wait in (30, 5):
                nspawn.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    nspawn.wait(timeout=wait)
                    break
            if nspawn.poll() is None:
                nspawn.kill()
                if leader is not None and _comm(leader) == "systemd":
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(leader, signal.SIGKILL)
                nspawn.wait(timeout=10)
        for mount in reversed(self._mounts):
            if subprocess.run(["umount", str(mount)], capture_output=True,
                              check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        self._mounts.clear()
        for cg in self._cgroups:
            for sub in sorted(cg.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()
        with contextlib.suppress(OSError):
            self.base.rmdir()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def booted(name: str | None = None) -> Iterator[Container]:
    """A prepared, booted container, halted and cleaned up afterwards."""
    box = Container(name or f"ovsndu-ci-{os.getpid()}")
    try:
        box.prepare()
        box.boot()
        yield box
    finally:
        box.stop()


def lines_json(text: str) -> list[dict[str, object]]:
    """``journalctl -o json`` output: one object per line."""
    import json

    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
