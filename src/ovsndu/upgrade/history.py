"""Durable records of upgrades, in the state directory.

Two files, both written so that a crash at any instant leaves something readable:

* ``inflight.json`` — the upgrade under way, rewritten atomically (temporary file,
  fsync, rename, fsync of the directory) at every phase change.  A supervisor that
  restarts and finds it knows an upgrade was interrupted, and in which phase.
* ``history.jsonl`` — one JSON object per finished upgrade, appended with fsync.  A
  torn last line (a crash mid-append) or any other corrupt line is skipped and
  reported, never fatal; the next append starts on a fresh line.

This module owns the record's shape (:class:`UpgradeRecord`) and the files.  It does
not decide anything: the phase machine (``machine.py``) does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from ovsndu.errors import HistoryError
from ovsndu.model import Snapshot

RECORD_FORMAT = 1
INFLIGHT = "inflight.json"
HISTORY = "history.jsonl"


def utc_now_iso() -> str:
    """Wall-clock time as used in records: ISO 8601, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True, kw_only=True)
class PhaseEntry:
    """One phase of a recorded upgrade."""

    phase: str
    started: str  # wall clock, ISO 8601
    duration_s: float
    ok: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> PhaseEntry:
        """Check and convert one ``phases`` item."""
        if not isinstance(data, Mapping):
            raise HistoryError(f"phase entry must be an object, got {type(data).__name__}")
        return cls(
            phase=_get(data, "phase", str),
            started=_get(data, "started", str),
            duration_s=float(_get(data, "duration_s", (int, float))),
            ok=_get(data, "ok", bool),
            reason=_get(data, "reason", str, ""),
        )


@dataclass(slots=True, kw_only=True)
class UpgradeRecord:
    """Everything worth keeping about one upgrade; the runner fills it in as it goes.

    ``phase`` and ``rollback_mode`` say where an in-flight upgrade is (what crash
    recovery needs); ``outcome`` and ``exit_code`` are set once it has finished.
    """

    id: str
    started_at: str
    from_version: str = ""
    to_version: str = ""
    from_pid: int | None = None
    to_pid: int | None = None
    from_binary: str = ""
    to_binary: str = ""
    rollback_binary: str = ""
    standby_pid: int | None = None
    client_pid: int | None = None
    phase: str = ""
    rollback_mode: str | None = None
    phases: list[PhaseEntry] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None
    exit_code: int | None = None
    reason: str = ""
    anomalies: list[str] = field(default_factory=list)
    #: entries that could not be carried, per category (each is also named in anomalies)
    uncarried: dict[str, int] = field(default_factory=dict)
    handover_gap_ms: float | None = None
    #: milliseconds from the start of the takeover to each handover milestone
    marks: dict[str, float] = field(default_factory=dict)
    #: the database schema: versions before/advertised/target, conversion and its timings
    schema: dict[str, Any] = field(default_factory=dict)
    #: what the new binary logged: ``rehearsal``/``standby`` summaries (upgrade/binlogs.py)
    vswitchd_logs: dict[str, Any] = field(default_factory=dict)
    #: datapath -> connection limit in force before the final read froze conntrack in
    #: the old process (ovs/ct_freeze.py): what to put back if it goes on serving
    ct_frozen: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, with the format version."""
        data = dataclasses.asdict(self)
        data["format"] = RECORD_FORMAT
        return data

    @classmethod
    def from_dict(cls, data: object) -> UpgradeRecord:
        """Check and convert a decoded record; unknown keys are ignored (newer writers)."""
        if not isinstance(data, Mapping):
            raise HistoryError(f"record must be an object, got {type(data).__name__}")
        fmt = data.get("format", RECORD_FORMAT)
        if fmt != RECORD_FORMAT:
            raise HistoryError(f"record format {fmt!r} is not {RECORD_FORMAT}")
        phases = _get(data, "phases", list, [])
        counts = _get(data, "counts", dict, {})
        digests = _get(data, "digests", dict, {})
        anomalies = _get(data, "anomalies", list, [])
        uncarried = _get(data, "uncarried", dict, {})
        if not all(isinstance(k, str) and _is_int(v) for k, v in uncarried.items()):
            raise HistoryError("uncarried must map names to integers")
        if not all(isinstance(k, str) and _is_int(v) for k, v in counts.items()):
            raise HistoryError("counts must map names to integers")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items()):
            raise HistoryError("digests must map names to strings")
        if not all(isinstance(a, str) for a in anomalies):
            raise HistoryError("anomalies must be strings")
        gap = _get(data, "handover_gap_ms", (int, float), None)
        marks = _get(data, "marks", dict, {})
        ct_frozen = _get(data, "ct_frozen", dict, {})
        if not all(isinstance(k, str) and _is_int(v) for k, v in ct_frozen.items()):
            raise HistoryError("ct_frozen must map datapaths to integers")
        if not all(isinstance(k, str) and isinstance(v, int | float) for k, v in marks.items()):
            raise HistoryError("marks must map names to numbers")
        return cls(
            id=_get(data, "id", str),
            started_at=_get(data, "started_at", str),
            from_version=_get(data, "from_version", str, ""),
            to_version=_get(data, "to_version", str, ""),
            from_pid=_get_int(data, "from_pid"),
            to_pid=_get_int(data, "to_pid"),
            from_binary=_get(data, "from_binary", str, ""),
            to_binary=_get(data, "to_binary", str, ""),
            rollback_binary=_get(data, "rollback_binary", str, ""),
            standby_pid=_get_int(data, "standby_pid"),
            client_pid=_get_int(data, "client_pid"),
            phase=_get(data, "phase", str, ""),
            rollback_mode=_get(data, "rollback_mode", str, None),
            phases=[PhaseEntry.from_dict(p) for p in phases],
            counts=dict(counts),
            digests=dict(digests),
            outcome=_get(data, "outcome", str, None),
            exit_code=_get_int(data, "exit_code"),
            reason=_get(data, "reason", str, ""),
            anomalies=list(anomalies),
            uncarried=dict(uncarried),
            handover_gap_ms=None if gap is None else float(gap),
            marks={k: float(v) for k, v in marks.items()},
            schema=dict(_get(data, "schema", dict, {})),
            vswitchd_logs=dict(_get(data, "vswitchd_logs", dict, {})),
            ct_frozen={k: int(v) for k, v in ct_frozen.items()},
        )


@dataclass(frozen=True, slots=True)
class CorruptLine:
    """A history line that could not be read, and why."""

    lineno: int
    reason: str


class HistoryStore:
    """The records in one state directory (created 0700 on first write).

    Corrupt history lines go to ``on_corrupt`` (default: a structlog warning).
    ``on_finish`` completes a finished record before it is written (the supervisor's:
    :func:`ovsndu.upgrade.binlogs.attach`); its failure is an anomaly, never fatal.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        on_corrupt: Callable[[CorruptLine], None] | None = None,
        on_finish: Callable[[UpgradeRecord], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.on_finish = on_finish
        self.inflight_path = self.state_dir / INFLIGHT
        self.history_path = self.state_dir / HISTORY
        self.on_corrupt = on_corrupt or self._log_corrupt
        self.corrupt: list[CorruptLine] = []
        """Lines skipped by the last :meth:`all`."""

    def write_inflight(self, record: UpgradeRecord) -> None:
        """Atomically replace the in-flight record."""
        self._ensure_dir()
        data = json.dumps(record.to_dict(), sort_keys=True, indent=1).encode() + b"\n"
        tmp = self.state_dir / f".{INFLIGHT}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.inflight_path)
        except OSError:
            with contextlib.suppress(OSError):  # no temporary file outlives a failed write
                tmp.unlink()
            raise
        self._fsync_dir()

    def inflight(self) -> UpgradeRecord | None:
        """The interrupted or running upgrade, or None.  A corrupt file is a HistoryError."""
        try:
            raw = self.inflight_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return UpgradeRecord.from_dict(json.loads(raw))
        except (ValueError, HistoryError) as exc:
            raise HistoryError(
                f"{self.inflight_path}: unreadable in-flight record: {exc}"
            ) from None

    def finish(self, record: UpgradeRecord) -> None:
        """Append the finished record to the history, then drop the in-flight file."""
        if record.outcome is None or record.exit_code is None:
            raise ValueError(f"upgrade {record.id} has no outcome yet")
        if self.on_finish is not None:
            try:
                self.on_finish(record)
            except Exception as exc:  # a summary must never cost the record
                record.anomalies.append(f"finishing the record failed: {exc!r}"[:500])
        self._ensure_dir()
        line = json.dumps(record.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        created = not self.history_path.exists()
        fd = os.open(self.history_path, flags, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line stays alone, and stays skipped
            _write_all(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            self._fsync_dir()
        try:
            self.inflight_path.unlink()
        except FileNotFoundError:
            return
        self._fsync_dir()

    def all(self) -> list[UpgradeRecord]:
        """Every finished upgrade, oldest first; corrupt lines are skipped and reported."""
        self.corrupt = []
        try:
            raw = self.history_path.read_bytes()
        except FileNotFoundError:
            return []
        records = []
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append(UpgradeRecord.from_dict(json.loads(line)))
            except (ValueError, HistoryError) as exc:
                bad = CorruptLine(lineno, str(exc).splitlines()[0][:200])
                self.corrupt.append(bad)
                self.on_corrupt(bad)
        return records

    def last(self) -> UpgradeRecord | None:
        """The most recent finished upgrade, or None."""
        records = self.all()
        return records[-1] if records else None

    def _log_corrupt(self, bad: CorruptLine) -> None:
        structlog.get_logger("ovsndu.history").warning(
            "history.corrupt_line", path=str(self.history_path), line=bad.lineno, why=bad.reason
        )

    def _ensure_dir(self) -> None:
        if self.state_dir.is_dir():
            return
        ensure_private_dir(self.state_dir)

    def _fsync_dir(self) -> None:
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_private_dir(path: Path) -> None:
    """Create *path* (and parents) and make it mode 0700, whatever existed or the umask."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.stat(path).st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def write_private(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write *data* (bytes, or pieces of it) to a new file *path* created mode 0600 (no
    window where others read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:  # an existing file keeps its mode: fix it
            os.fchmod(fd, 0o600)
        for piece in (data,) if isinstance(data, bytes) else data:
            _write_all(fd, piece)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)


def write_snapshot(path: Path, snap: Snapshot) -> None:
    """*snap*'s JSON (format 1) to a new private file, written as it is encoded."""
    write_private(path, (chunk.encode() for chunk in snap.json_chunks()))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_MISSING: Any = object()


def _get(data: Mapping[str, Any], key: str, kind: Any, default: Any = _MISSING) -> Any:
    """``data[key]`` checked against ``kind`` (None allowed only as the default)."""
    if key not in data or (data[key] is None and default is None):
        if default is _MISSING:
            raise HistoryError(f"{key} is missing")
        return default
    value = data[key]
    if isinstance(value, bool) and kind is not bool:
        raise HistoryError(f"{key} must not be a boolean")
    if not isinstance(value, kind):
        raise HistoryError(f"{key} has the wrong type {type(value).__name__}")
    return value


def _get_int(data: Mapping[str, Any], key: str) -> int | None:
    value: int | None = _get(data, key, int, None)
    return value
