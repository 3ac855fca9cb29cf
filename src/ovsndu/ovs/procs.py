"""The host's processes as /proc shows them: a PID's argv, and the PIDs whose argv
matches (how ovsndu finds what an interrupted upgrade left running)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def cmdline(pid: int) -> list[bytes]:
    """The argv of *pid* (empty when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def pids_where(match: Callable[[list[bytes]], bool]) -> list[int]:
    """Live PIDs whose argv *match* accepts."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and (argv := cmdline(int(entry.name))) and match(argv)]
