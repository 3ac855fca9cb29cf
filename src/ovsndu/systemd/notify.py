"""sd_notify without libsystemd: one datagram to ``$NOTIFY_SOCKET`` per call.

This module owns the notification protocol (newline-separated ``KEY=value`` fields in
one datagram; an address starting with ``@`` is in the abstract namespace) and the
watchdog environment.  It connects anew on every call, since systemd may re-create
its socket, and never raises: notifications are best effort, so a failure is
reported as ``False``.

    notify(ready=True, status="serving")
    notify(reloading=True)            # adds MONOTONIC_USEC, as systemd >= 253 wants
    notify(extend_timeout_usec=30_000_000)
"""

from __future__ import annotations

import os
import re
import select
import socket
import time

SEND_TIMEOUT = 0.2
"""Seconds a notification may block when systemd's queue is full."""

_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def notify(**fields: str | int | bool | None) -> bool:
    """Send ``fields`` (sd_notify keys, in either case: ``ready=True`` or ``READY=1``).

    ``True`` becomes ``1``; ``False`` and ``None`` leave a field out; newlines in
    values become spaces.  Returns whether a datagram was sent: ``False`` when
    ``$NOTIFY_SOCKET`` is unset (not under systemd) or the send failed.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    upper = {name.upper(): value for name, value in fields.items()}
    if upper.get("RELOADING") and "MONOTONIC_USEC" not in upper:
        upper["MONOTONIC_USEC"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    payload = format_fields(upper)
    if not payload:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(payload)
    except OSError:
        return False
    return True


def barrier(timeout: float = 5.0) -> bool:
    """Wait until systemd has processed every notification sent before (``BARRIER=1``).

    A file descriptor goes with the datagram; systemd closes it once it has handled
    what came before, which we see as a hang-up on our end of the pipe.  False when
    not under systemd, on error, or after *timeout* seconds.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            socket.send_fds(sock, [b"BARRIER=1\n"], [write_end])
        os.close(write_end)
        write_end = -1
        poller = select.poll()
        poller.register(read_end, select.POLLHUP)
        return bool(poller.poll(timeout * 1000))
    except OSError:
        return False
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def format_fields(fields: dict[str, str | int | bool | None]) -> bytes:
    """The datagram for ``fields``: ``KEY=value`` lines, in the order given."""
    lines = []
    for name, value in fields.items():
        key = name.upper()
        if not _KEY.match(key):
            raise ValueError(f"not an sd_notify field name: {name!r}")
        if value is None or value is False:
            continue
        text = "1" if value is True else str(value)
        lines.append(f"{key}={text.replace(chr(10), ' ')}")
    return "\n".join(lines).encode() + b"\n" if lines else b""


def watchdog_interval() -> float | None:
    """The watchdog period in seconds if systemd expects pings from this process.

    From ``$WATCHDOG_USEC``; ``None`` when it is unset or invalid, or when
    ``$WATCHDOG_PID`` names another process.  Send ``WATCHDOG=1`` at half this period.
    """
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
