"""unixctl: run ``ovs-appctl`` commands against a daemon without forking ``ovs-appctl``."""

from __future__ import annotations

import os
from pathlib import Path

from ovsndu.errors import VswitchdError
from ovsndu.ovs.jsonrpc import JsonRpcClient


def read_pidfile(path: Path) -> int:
    """The PID a pidfile names; VswitchdError when absent or not a number."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a PID"
        raise VswitchdError(f"daemon not running? no usable pidfile {path} ({reason})") from None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


class Unixctl:
    """A unixctl connection to one daemon, e.g. ``Unixctl.for_daemon(rundir, "ovs-vswitchd")``."""

    def __init__(self, socket_path: str, *, pid: int | None = None, timeout: float = 60.0):
        self.socket_path = socket_path
        self.pid = pid
        self._rpc = JsonRpcClient(socket_path, timeout=timeout, error=VswitchdError)

    @classmethod
    def for_daemon(
        cls, rundir: str | Path, name: str = "ovs-vswitchd", *, pid: int | None = None,
        timeout: float = 60.0,
    ) -> Unixctl:
        """Connect to ``<rundir>/<name>.<pid>.ctl``; the PID comes from the pidfile unless given."""
        rundir = Path(rundir)
        if pid is None:
            pid = read_pidfile(rundir / f"{name}.pid")
        path = rundir / f"{name}.{pid}.ctl"
        if not os.path.exists(path):
            raise VswitchdError(f"{name} (pid {pid}) is not reachable: no socket {path}")
        return cls(str(path), pid=pid, timeout=timeout)

    def __call__(self, command: str, *args: str) -> str:
        """Run one command; return its text output; VswitchdError on failure."""
        result = self._rpc.call(command, list(args))
        return result if isinstance(result, str) else ""

    def close(self) -> None:
        """Close the connection."""
        self._rpc.close()

    def __enter__(self) -> Unixctl:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
