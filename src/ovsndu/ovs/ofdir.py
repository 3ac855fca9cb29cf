"""Keep controllers away from a vswitchd until its restored OpenFlow table is complete.

vswitchd listens for OpenFlow on ``punix:$OVS_RUNDIR/<bridge>.mgmt`` (and
``<bridge>.snoop``) as soon as it builds a bridge, even while ``flow-restore-wait``
is set; a management-socket client such as ovn-controller could write to it before
ovsndu's install, which starts by deleting every flow.  Controllers of the
``Controller`` table are not connected while ``flow-restore-wait`` is set.

So a vswitchd started for a restore (the standby of an upgrade, the original of a
restore-mode rollback) gets a private ``OVS_RUNDIR``: ``<rundir>/.of-<id>``, a
symlink to the private directory ``<rundir>/.of-<id>.d`` (mode 0700).  Its sockets
are created there, where no controller looks:

- its unixctl socket is hard-linked into the rundir at once (the tools find it
  through the pidfile; unixctl cannot write flows);
- ovsndu installs and verifies through the private OpenFlow sockets;
- :meth:`PrivateRundir.publish` then renames each listening socket into the rundir
  (a listening Unix socket keeps listening under its new name) — the OpenFlow ones,
  and those of vhost-user ports, which a VM's QEMU looks for in the rundir (OVS's
  default ``vhost-sock-dir``) — and points the symlink at the rundir itself, so that
  sockets of bridges and ports added later are created where the tools look, and a
  vhost-user port deleted later unlinks its socket there (OVS names it through the
  link).

Nothing ovsndu does after ``publish`` writes OpenFlow state.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

PREFIX = ".of-"
DB_LINK_SUFFIX = ".db.sock"
OPENFLOW_SUFFIXES = (".mgmt", ".snoop")


@dataclass(frozen=True, slots=True)
class PrivateRundir:
    """The private ``OVS_RUNDIR`` of one vswitchd under restore."""

    rundir: Path
    name: str

    @classmethod
    def create(cls, rundir: Path, tag: str | None = None) -> PrivateRundir:
        """Make the private directory and the symlink the vswitchd is given."""
        self = cls(Path(rundir), PREFIX + (tag or secrets.token_hex(3)))
        self.discard()
        self.private.mkdir(mode=0o700)
        # The rundir's subdirectories (e.g. other_config:vhost-sock-dir), empty: sockets
        # created there are published into the real ones.
        for sub in Path(rundir).iterdir():
            if sub.is_dir() and not sub.is_symlink() and not sub.name.startswith("."):
                (self.private / sub.name).mkdir()
        self.link.symlink_to(self.private.name)
        return self

    @property
    def link(self) -> Path:
        """What the vswitchd gets as ``OVS_RUNDIR``."""
        return self.rundir / self.name

    @property
    def db_link(self) -> Path:
        """The database remote of a standby that initialises DPDK first (a symlink,
        :mod:`ovsndu.ovs.preinit`); it lives as long as the private rundir's link."""
        return self.rundir / (self.name + DB_LINK_SUFFIX)

    @property
    def private(self) -> Path:
        """Where its sockets are until published: ovsndu's OpenFlow directory for it."""
        return self.rundir / (self.name + ".d")

    def share_ctl(self, pid: int) -> bool:
        """Hard-link *pid*'s unixctl socket into the rundir; False while it has none."""
        name = f"ovs-vswitchd.{pid}.ctl"
        if (self.rundir / name).exists():
            return True
        try:
            os.link(self.private / name, self.rundir / name)
        except FileNotFoundError:
            return False
        return True

    def publish(self) -> list[str]:
        """Move the OpenFlow sockets, then every other listening socket (vhost-user
        ports': a VM's QEMU looks for them in the rundir, where the old process's stale
        ones are replaced), into the rundir and point the link at the rundir; the names
        moved.  Controllers can connect from now on."""
        moved = []
        socks = sorted((p for p in self.private.rglob("*") if _is_socket(p)),
                       key=lambda p: (p.suffix not in OPENFLOW_SUFFIXES, str(p)))
        for sock in socks:
            if sock.suffix == ".ctl":  # the unixctl socket's second name (share_ctl)
                continue
            where = sock.relative_to(self.private)
            os.replace(sock, self.rundir / where)
            moved.append(str(where))
        tmp = self.rundir / (self.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(".")
        os.replace(tmp, self.link)
        shutil.rmtree(self.private, ignore_errors=True)  # left: the ctl's second name
        return moved

    def discard(self) -> None:
        """Remove the link and the private directory (the vswitchd is gone)."""
        for link in (self.link, self.db_link):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        shutil.rmtree(self.private, ignore_errors=True)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def in_use(rundir: Path) -> set[str]:
    """Names of private rundirs that a live process has as its ``OVS_RUNDIR``."""
    prefix = f"OVS_RUNDIR={Path(rundir) / PREFIX}".encode()
    names = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(prefix):
                names.add(Path(os.fsdecode(var.split(b"=", 1)[1])).name)
    return names


def remove_unused(rundir: Path) -> None:
    """Remove private rundirs (links and directories) no live process uses any more."""
    used = in_use(rundir)
    for entry in Path(rundir).glob(PREFIX + "*"):
        base = entry.name.removesuffix(".d").removesuffix(DB_LINK_SUFFIX)
        if entry.name in used or base in used:
            continue
        if entry.is_symlink() or entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class HiddenSockets:
    """The serving vswitchd's OpenFlow sockets, moved out of sight for its final read.

    From :func:`hide` on, no new OpenFlow connection reaches the old process (a
    controller's connect fails and it retries — later reaching the new one); ovsndu
    reads through :attr:`directory`.  Connections already open are not affected.
    """

    rundir: Path
    directory: Path
    names: tuple[str, ...]

    def unhide(self) -> None:
        """Put the sockets back (the old process keeps serving: a discard)."""
        for name in self.names:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.directory / name, self.rundir / name)
        shutil.rmtree(self.directory, ignore_errors=True)

    def remove(self) -> None:
        """The old process is gone: drop its sockets."""
        shutil.rmtree(self.directory, ignore_errors=True)


def hide(rundir: Path, tag: str) -> HiddenSockets:
    """Move every OpenFlow socket of the rundir into ``<rundir>/.of-<tag>.old``."""
    rundir = Path(rundir)
    directory = rundir / f"{PREFIX}{tag}.old"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    names = []
    for sock in sorted(rundir.iterdir()):
        if sock.suffix in OPENFLOW_SUFFIXES and not sock.is_dir():
            os.replace(sock, directory / sock.name)
            names.append(sock.name)
    return HiddenSockets(rundir, directory, tuple(names))


def settle(rundir: Path, *, old_alive: bool) -> None:
    """After a supervisor crash mid-upgrade: put every OpenFlow socket where the tools look.

    Sockets hidden for a final read go back if the old process still lives (it serves),
    else away; a live process's private rundir is published (crash recovery then
    restores into it with controllers able to connect — the one case where the ordering
    of docs/upgrade.md cannot be kept); unused ones are removed.
    """
    rundir = Path(rundir)
    for hidden in rundir.glob(PREFIX + "*.old"):
        names = tuple(p.name for p in hidden.iterdir() if p.suffix in OPENFLOW_SUFFIXES)
        moved = HiddenSockets(rundir, hidden, names)
        if old_alive:
            moved.unhide()
        else:
            moved.remove()
    for name in in_use(rundir):
        private = PrivateRundir(rundir, name)
        if private.private.is_dir():
            private.publish()
    remove_unused(rundir)
