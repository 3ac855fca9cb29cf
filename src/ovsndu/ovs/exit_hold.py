"""What the old vswitchd's death would free slowly, held by the supervisor and freed after the lift.

The standby waits, stopped, for the old process to be gone: only its exit releases the
OVSDB lock and its taps, and Linux releases them late.  ``do_exit`` first frees the
whole address space (``exit_mm``: ~10 ms for the 88 MB of 100k conntrack entries),
then closes the files in reverse order, and every packet socket (a system port of
the userspace datapath) waits for an RCU grace period in ``packet_release`` (10–25 ms
each here).  Measured at the kill: 30–55 ms, against 1 ms without either.

An :class:`ExitHold`, taken while the old process still runs, keeps the last
reference to both, so that its exit frees neither and reaches the lock and the taps
at once:

- its packet sockets: duplicated with ``pidfd_getfd``; the process's own close is
  then not the last one.  Until :meth:`ExitHold.release` closes them they stay bound
  and receive copies nobody reads (bounded by the socket buffer);
- its address space: ``process_vm_readv`` keeps a reference on it (``mm_users``) while
  it copies; the copy targets a page registered with ``userfaultfd``, so it waits
  there.  A small child process (``python -m ovsndu.ovs.exit_hold PID``) does this, not
  the supervisor: a thread waiting in such a fault cannot be stopped, so a debugger or
  ``py-spy`` attaching to the supervisor would hang on it.  :meth:`ExitHold.release`
  closes the child's stdin; it exits, and the kernel frees the old process's memory
  in the child's exit, after the lift.  If the supervisor dies, the child's stdin
  ends too.

Best effort: what cannot be held (no ``userfaultfd``, a seccomp filter, an old
kernel) is said in :attr:`ExitHold.notes` and the old process dies the slow way.  The
address space of a process that maps hugepages (the DPDK build) is not held: its
successor may need those pages back before the lift.  A process that goes on (a
rollback) loses nothing: release only drops references.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import select
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
# x86_64 numbers (the supported platform); elsewhere the hold is skipped, named.
_SYS = {"x86_64": {"userfaultfd": 323, "process_vm_readv": 310, "pidfd_getfd": 438}}
_UFFD_API = 0xAA
_PAGE = mmap.PAGESIZE


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr


_UFFDIO_API = _iowr(0x3F, 24)  # struct uffdio_api: api, features, ioctls
_UFFDIO_REGISTER = _iowr(0x00, 32)  # struct uffdio_register: start, len, mode, ioctls
_UFFDIO_REGISTER_MODE_MISSING = 1


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _syscall(name: str, *args: Any) -> int:
    number = _SYS.get(os.uname().machine, {}).get(name)
    if number is None:
        raise OSError(f"{name}: no syscall number known on {os.uname().machine}")
    # syscall(2) is variadic and reads every argument as a long: pass them so (a plain
    # int leaves the upper half of its register undefined).
    result = int(_LIBC.syscall(ctypes.c_long(number),
                               *(ctypes.c_long(a) if isinstance(a, int) else a for a in args)))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")
    return result


def packet_socket_fds(pid: int) -> list[int]:
    """The descriptors of *pid* that are packet sockets (AF_PACKET), by inode."""
    with open(f"/proc/{pid}/net/packet") as f:
        inodes = {line.split()[-1] for line in f.read().splitlines()[1:] if line.split()}
    fds = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            if target.startswith("socket:[") and target[8:-1] in inodes:
                fds.append(int(name))
    return sorted(fds)


@dataclass
class ExitHold:
    """The references held on one process (see the module's docstring)."""

    pid: int
    sockets: list[int] = field(default_factory=list)  # our duplicates
    notes: list[str] = field(default_factory=list)  # what could not be held, and why
    _holder: subprocess.Popen[bytes] | None = None  # the child holding the address space
    _releasing: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def take(cls, pid: int, *, confirm_s: float = 1.0) -> ExitHold:
        """Hold what *pid*'s death would free slowly; never raises (see :attr:`notes`)."""
        hold = cls(pid)
        try:
            hold._hold_sockets()
        except OSError as exc:
            hold.notes.append(f"packet sockets not held: {exc}")
        try:
            hold._hold_memory(confirm_s)
        except OSError as exc:
            hold._drop_memory()
            hold.notes.append(f"address space not held: {exc}")
        return hold

    @property
    def memory_held(self) -> bool:
        """Whether the address space is held (the child's copy waits on its page)."""
        return self._holder is not None and self._holder.poll() is None

    def _hold_sockets(self) -> None:
        pidfd = os.pidfd_open(self.pid)
        try:
            for fd in packet_socket_fds(self.pid):
                self.sockets.append(_syscall("pidfd_getfd", pidfd, fd, 0))
        finally:
            os.close(pidfd)

    def _hold_memory(self, confirm_s: float) -> None:
        self._holder = holder = subprocess.Popen(
            [sys.executable, "-m", "ovsndu.ovs.exit_hold", str(self.pid), str(confirm_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], confirm_s + 10)
        said = holder.stdout.readline().decode(errors="replace").strip() if ready else ""
        if said != "held":
            raise OSError(said.removeprefix("not held: ") or
                          "the holding process did not answer")

    def _drop_memory(self) -> None:
        holder, self._holder = self._holder, None
        if holder is None:
            return
        with contextlib.suppress(OSError):
            if holder.stdin is not None:
                holder.stdin.close()  # it exits: the old process's memory is freed there
        try:
            holder.wait(10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()

    def release(self) -> None:
        """Drop every reference held: the kernel frees what the process left (blocking:
        tens of ms; run it in a thread, after the lift).  Idempotent; a second call
        returns once the first is done."""
        with self._releasing:
            self._drop_memory()
            sockets, self.sockets = self.sockets, []
            for fd in sockets:
                with contextlib.suppress(OSError):
                    os.close(fd)


def hugetlb_kib(rollup: str) -> int:
    """KiB of hugetlb pages a ``/proc/PID/smaps_rollup`` text counts (files on a
    hugetlbfs or memfd, as DPDK's ``--in-memory`` maps them, alike)."""
    total = 0
    for line in rollup.splitlines():
        key, _, value = line.partition(":")
        if key in ("Shared_Hugetlb", "Private_Hugetlb"):
            total += int(value.split()[0])
    return total


def hold_here(pid: int, confirm_s: float) -> tuple[threading.Thread, int, mmap.mmap]:
    """In this process: a thread whose ``process_vm_readv`` of *pid* waits on a page of
    ours registered with ``userfaultfd``, holding *pid*'s address space; OSError when it
    cannot (hugepages, no ``userfaultfd``, ...).  The thread ends only with the process;
    the caller keeps the ``userfaultfd`` and the page (returned) as long."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        huge = hugetlb_kib(f.read())
    if huge:  # its successor may need them back before the lift
        raise OSError(f"it maps {huge} KiB of hugepages (DPDK's memory, freed at its death)")
    with open(f"/proc/{pid}/maps") as f:
        address = _readable_address(f.read(), pid)
    uffd = _syscall("userfaultfd", os.O_CLOEXEC | os.O_NONBLOCK)
    fcntl.ioctl(uffd, _UFFDIO_API, bytearray(struct.pack("QQQ", _UFFD_API, 0, 0)))
    page = mmap.mmap(-1, _PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    local = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fcntl.ioctl(uffd, _UFFDIO_REGISTER, bytearray(
        struct.pack("QQQQ", local, _PAGE, _UFFDIO_REGISTER_MODE_MISSING, 0)))
    outcome: list[str] = []

    def copy() -> None:
        try:
            _syscall("process_vm_readv", pid, ctypes.byref(_IoVec(local, 8)), 1,
                     ctypes.byref(_IoVec(address, 8)), 1, 0)
        except OSError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=copy, name=f"exit-hold-{pid}", daemon=True)
    reader.start()
    # The copy faults on our page only once it holds the address space.
    if not select.select([uffd], [], [], confirm_s)[0]:
        reader.join(0.01)
        raise OSError(outcome[0] if outcome else "the copy did not reach the registered page")
    return reader, uffd, page


def main(argv: list[str]) -> int:
    """``python -m ovsndu.ovs.exit_hold PID [CONFIRM_S]``: hold PID's address space until
    stdin ends (says ``held``, or ``not held: why``)."""
    pid, confirm_s = int(argv[0]), float(argv[1]) if len(argv) > 1 else 1.0
    try:
        held = hold_here(pid, confirm_s)
    except OSError as exc:
        print(f"not held: {exc}", flush=True)
        return 1
    print("held", flush=True)
    sys.stdin.buffer.read()  # until the supervisor releases (or is gone)
    # The waiting copy ends with the process, and the memory is freed there; the status
    # says whether the hold still stood.
    os._exit(0 if held[0].is_alive() else 1)


def _readable_address(maps: str, pid: int) -> int:
    """The start of a private readable mapping in *maps* (the first one)."""
    for line in maps.splitlines():
        fields = line.split()
        if fields[1].startswith("r") and fields[1].endswith("p"):
            return int(fields[0].split("-")[0], 16)
    raise OSError(f"no readable mapping in /proc/{pid}/maps")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
