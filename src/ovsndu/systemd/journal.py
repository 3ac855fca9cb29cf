"""Logging: the structlog chain, ending in journald's native protocol or a console.

This module owns how ovsndu logs leave the process.  Under systemd every event becomes
one journal entry, sent as a datagram to ``/run/systemd/journal/socket`` in the native
protocol (``KEY=value`` lines; a value holding a newline uses the binary form ``KEY\\n``
+ 64-bit little-endian length + bytes + ``\\n``), with no C binding.  An entry has:

* ``MESSAGE`` — the event name followed by its fields as ``key=value`` (readable in a
  plain ``journalctl``), and the traceback if there is one;
* ``PRIORITY`` from the level, ``SYSLOG_IDENTIFIER=ovsndu``;
* ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC`` of the real call site;
* each bound or passed key as ``OVSNDU_<KEY>`` (``event_kind`` becomes ``OVSNDU_EVENT``),
  so ``journalctl OVSNDU_UPGRADE_ID=…`` finds one upgrade.

Logging never raises and never blocks for long: a send that fails (queue full, socket
missing, journald restarting) is counted (:func:`dropped_count`) after waiting at most
:data:`SEND_WAIT` seconds, and the next entry that gets through carries
``OVSNDU_DROPPED=<entries lost since the previous delivered one>``.  Entries larger
than the datagram limit are truncated (counted in :attr:`JournaldSink.truncated`);
the sealed-memfd path for huge entries is not implemented.
"""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import struct
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, NoReturn, TextIO

import structlog
from structlog.processors import CallsiteParameter
from structlog.typing import EventDict, Processor, WrappedLogger

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "ovsndu"
SEND_WAIT = 0.005
"""Seconds one entry may wait for room in journald's queue before it is dropped."""
MAX_DATAGRAM = 96 * 1024
"""Entries above this size are truncated (a datagram must fit the socket buffer)."""

PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
FIELD_NAMES = {
    "upgrade_id": "OVSNDU_UPGRADE_ID",
    "phase": "OVSNDU_PHASE",
    "event_kind": "OVSNDU_EVENT",
    "outcome": "OVSNDU_OUTCOME",
}
_CALLSITE = {"pathname": "CODE_FILE", "lineno": "CODE_LINE", "func_name": "CODE_FUNC"}
_NOT_FIELDS = {"event", "level", "timestamp", "exception", *_CALLSITE}
_BAD_CHARS = re.compile(r"[^A-Z0-9_]")
_GONE = {errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET}

_IN_MESSAGE = 200  # characters of a value repeated in MESSAGE; its own field has it all

Fields = list[tuple[str, bytes]]


def field_name(key: str) -> str:
    """The journal field for an event-dict key (valid: ``[A-Z0-9_]``, at most 64)."""
    name = FIELD_NAMES.get(key) or "OVSNDU_" + _BAD_CHARS.sub("_", key.upper())
    return name[:64]


def encode_entry(fields: Fields) -> bytes:
    """One native-protocol datagram for ``fields``."""
    out = bytearray()
    for key, value in fields:
        if b"\n" in value:
            out += key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += key.encode() + b"=" + value + b"\n"
    return bytes(out)


def _to_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "replace")


def _short(key: str, value: object) -> str:
    text = str(value)
    return f"{key}={text if len(text) <= _IN_MESSAGE else text[:_IN_MESSAGE] + '…'}"


class JournaldSink:
    """The last structlog processor: send the event to journald, then drop it.

    With ``forward=True`` the event dict is passed on (minus call-site keys) instead,
    so a console renderer can follow.
    """

    __slots__ = (
        "_congested",
        "_lock",
        "_pending",
        "_sock",
        "dropped",
        "forward",
        "path",
        "truncated",
    )

    def __init__(self, path: str = JOURNAL_SOCKET, *, forward: bool = False) -> None:
        self.path = path
        self.forward = forward
        self.dropped = 0
        self.truncated = 0
        self._pending = 0  # dropped since the last delivered entry
        self._congested = False  # the last send found journald's queue full
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        """Send ``event_dict`` as one entry; raise DropEvent unless forwarding."""
        self.send(self.fields(method_name, event_dict))
        if not self.forward:
            raise structlog.DropEvent
        for key in _CALLSITE:
            event_dict.pop(key, None)
        return event_dict

    def fields(self, method_name: str, event_dict: MutableMapping[str, Any]) -> Fields:
        """The journal fields for one event."""
        level = str(event_dict.get("level", method_name)).lower()
        extra = [(k, v) for k, v in event_dict.items() if k not in _NOT_FIELDS]
        message = " ".join([str(event_dict.get("event", "")), *(_short(k, v) for k, v in extra)])
        if "exception" in event_dict:
            message += "\n" + str(event_dict["exception"])
        fields: Fields = [
            ("MESSAGE", _to_bytes(message)),
            ("PRIORITY", str(PRIORITIES.get(level, 6)).encode()),
            ("SYSLOG_IDENTIFIER", IDENTIFIER.encode()),
        ]
        fields += [(j, _to_bytes(event_dict[k])) for k, j in _CALLSITE.items() if k in event_dict]
        fields += [(field_name(k), _to_bytes(v)) for k, v in extra]
        return fields

    def send(self, fields: Fields) -> bool:
        """Send one entry; count it as dropped (never raise) if it cannot go."""
        with self._lock:
            if self._pending:
                fields = [*fields, ("OVSNDU_DROPPED", str(self._pending).encode())]
            ok = self._send(fields)
            if ok:
                self._pending = 0
            else:
                self.dropped += 1
                self._pending += 1
            return ok

    def _send(self, fields: Fields) -> bool:
        data = encode_entry(fields)
        if len(data) > MAX_DATAGRAM:
            data = self._truncate(fields, MAX_DATAGRAM)
        for attempt in range(2):
            sock = self._connect()
            if sock is None:
                return False
            try:
                sock.send(data)
            except BlockingIOError:
                # Wait for room once; while the queue stays full, do not wait again.
                if attempt or self._congested:
                    self._congested = True
                    return False
                if not select.select([], [sock], [], SEND_WAIT)[1]:
                    self._congested = True
                    return False
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE and not attempt:
                    data = self._truncate(fields, MAX_DATAGRAM // 8)
                    continue
                self._close()
                if exc.errno not in _GONE or attempt:
                    return False
            else:
                self._congested = False
                return True
        return False

    def _truncate(self, fields: Fields, limit: int) -> bytes:
        """Cut the longest values to one common cap so the entry fits ``limit``."""
        self.truncated += 1
        fields = [*fields, ("OVSNDU_TRUNCATED", str(len(encode_entry(fields))).encode())]
        marker = b" [truncated]"

        def capped(cap: int) -> bytes:
            return encode_entry([(k, v if len(v) <= cap else v[:cap] + marker) for k, v in fields])

        low, high = 0, max(len(v) for _, v in fields)
        while low < high:  # the largest cap that fits
            mid = (low + high + 1) // 2
            if len(capped(mid)) <= limit:
                low = mid
            else:
                high = mid - 1
        return capped(low)

    def _connect(self) -> socket.socket | None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * MAX_DATAGRAM)
                sock.connect(self.path)
            except OSError:
                sock.close()
                return None
            self._sock = sock
        return self._sock

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Drop the connection (the next entry reconnects)."""
        with self._lock:
            self._close()


_SINK: JournaldSink | None = None


def dropped_count() -> int:
    """Journal entries lost since logging was configured (0 without journald)."""
    return _SINK.dropped if _SINK is not None else 0


def journald_available(journal_socket: str = JOURNAL_SOCKET) -> bool:
    """Whether logs should go to journald: $JOURNAL_STREAM, or its socket and no tty."""
    if os.environ.get("JOURNAL_STREAM"):
        return True
    return os.path.exists(journal_socket) and not _isatty(sys.stderr)


def configure_logging(
    *,
    journald: bool | None = None,
    console: bool | None = None,
    level: str = "info",
    journal_socket: str = JOURNAL_SOCKET,
    stream: TextIO | None = None,
) -> JournaldSink | None:
    """Configure structlog for the process; returns the journald sink, if any.

    ``journald`` defaults to :func:`journald_available`; ``console`` (readable,
    coloured on a tty, to stderr) defaults to on a tty or when journald is off.
    """
    global _SINK
    stream = stream if stream is not None else sys.stderr
    if journald is None:
        journald = journald_available(journal_socket)
    if console is None:
        console = _isatty(stream) or not journald
    if _SINK is not None:
        _SINK.close()
    _SINK = JournaldSink(journal_socket, forward=console) if journald else None

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
    ]
    if _SINK is not None:
        processors += [
            structlog.processors.CallsiteParameterAdder(
                [CallsiteParameter.PATHNAME, CallsiteParameter.LINENO, CallsiteParameter.FUNC_NAME],
                additional_ignores=["ovsndu.systemd.journal"],
            ),
            structlog.processors.format_exc_info,
            _SINK,
        ]
    if console:
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=_isatty(stream)),
        ]
    else:
        processors.append(_never_reached)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return _SINK


def _never_reached(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> NoReturn:
    """After a non-forwarding sink nothing is rendered."""
    raise structlog.DropEvent


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
