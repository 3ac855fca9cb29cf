"""What an OVS daemon said: its log file summarised, its stderr's last lines.

OVS writes log lines as ``TIME|SEQ|MODULE|LEVEL|MESSAGE`` (the default file pattern,
``TIME`` in UTC).  :func:`summarise` counts lines by level and keeps the WARN, ERR and
EMER ones verbatim, bounded (:data:`MAX_LINES` lines of :data:`MAX_CHARS` characters,
from at most the last :data:`MAX_BYTES` of the file), optionally only those written
since a given time.  :func:`last_words` is the one-line form for an error message:
its stderr's last lines and its log's last complaint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

MAX_LINES = 20
MAX_CHARS = 300
MAX_BYTES = 4 << 20
LEVELS = ("EMER", "ERR", "WARN", "INFO", "DBG")
KEPT = ("EMER", "ERR", "WARN")
_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z?\|\d+\|[^|]*\|([A-Z]+)\|")


def _read_tail(path: Path, limit: int) -> tuple[str, bool]:
    """The last *limit* bytes of *path* (from a line start) and whether some were left out."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - limit)
        f.seek(start)
        data = f.read(limit)
    if start:
        data = data[data.find(b"\n") + 1:]
    return data.decode("utf-8", "replace"), bool(start)


def summarise(path: Path, *, since: str = "") -> dict[str, Any]:
    """Counts by level and the WARN/ERR/EMER lines of the OVS log *path*.

    *since*: only lines whose time (``YYYY-MM-DDTHH:MM:SS.mmm``, UTC) is not earlier.
    An absent file gives ``{"missing": path}``; nothing here raises for a bad file."""
    try:
        text, cut = _read_tail(path, MAX_BYTES)
    except OSError as exc:
        return {"file": str(path), "missing": exc.strerror or str(exc)}
    counts: dict[str, int] = {}
    kept: list[str] = []
    omitted = 0
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None or (since and m.group(1)[:len(since)] < since):
            continue
        level = m.group(2)
        counts[level] = counts.get(level, 0) + 1
        if level in KEPT:
            if len(kept) < MAX_LINES:
                kept.append(line[:MAX_CHARS])
            else:
                omitted += 1
    out: dict[str, Any] = {"file": str(path), "counts": counts, "lines": kept}
    if omitted:
        out["lines_omitted"] = omitted
    if cut:
        out["read_last_bytes"] = MAX_BYTES
    return out


def tail(path: Path, count: int = 5) -> list[str]:
    """The last *count* non-blank lines of *path* (each cut to MAX_CHARS); [] if unreadable."""
    try:
        text, _ = _read_tail(path, 64 << 10)
    except OSError:
        return []
    return [ln.rstrip()[:MAX_CHARS] for ln in text.splitlines() if ln.strip()][-count:]


def last_words(stderr: Path | None, log: Path | None, *, since: str = "") -> str:
    """``stderr: A | B; log: C`` — the last stderr lines and the log's last WARN/ERR line
    (its last line when it has none), for a one-line error; "" when both are silent."""
    parts = []
    said = tail(stderr, 3) if stderr is not None else []
    if said:
        parts.append("stderr: " + " | ".join(said))
    if log is not None:
        summary = summarise(log, since=since)
        complaints = summary.get("lines") or []
        last = complaints[-1:] or tail(log, 1)
        if last:
            fields = last[0].split("|", 4)
            parts.append("log: " + (f"{fields[3]} {fields[2]}: {fields[4]}"
                                    if len(fields) == 5 else last[0]))
    return "; ".join(parts)


def one_line(summary: dict[str, Any]) -> str:
    """``INFO 49, WARN 1, ERR 0`` style counts of a :func:`summarise` result."""
    counts = summary.get("counts") or {}
    if not counts:
        return "no log lines" if "missing" not in summary else f"no log ({summary['missing']})"
    return ", ".join(f"{lv} {counts[lv]}" for lv in LEVELS if lv in counts)
