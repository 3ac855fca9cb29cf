"""Human-readable tables of snapshots and diffs (pure: data in, text out)."""

from __future__ import annotations

from collections.abc import Sequence

from ovsndu.model import CATEGORIES, CategoryDiff, Entry, Snapshot


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def entry_text(entry: Entry) -> str:
    """One line: the entry's stable fields as ``key=value`` (empty/zero values left out)."""
    parts = []
    for key, value in entry.stable().items():
        if value in (None, "", [], 0, False) and key not in entry.IDENTITY:
            continue
        text = "[" + " | ".join(map(str, value)) + "]" if isinstance(value, list) else value
        parts.append(f"{key}={text}")
    return " ".join(parts)


def snapshot_table(snap: Snapshot, *, entries: bool = True) -> str:
    """A summary table (category, count, digest), then each category's entries."""
    info = snap.vswitchd
    out = [f"vswitchd pid {info.pid}, {info.version}", ""]
    out.append(
        table(
            ("category", "count", "digest"),
            [(name, len(snap.categories[name]), snap.digest(name)[:16]) for name in CATEGORIES],
        )
    )
    if entries:
        for name in CATEGORIES:
            if snap.categories[name]:
                out += ["", f"{name}:"]
                out += [f"  {entry_text(e)}" for e in snap.categories[name]]
    return "\n".join(out)


def diff_table(diffs: Sequence[CategoryDiff], *, limit: int = 20) -> str:
    """Per category: equal or not, with counts; then the differing entries."""
    rows = [
        (
            d.category,
            "equal" if d.equal else "DIFFERENT",
            len(d.added),
            len(d.removed),
            len(d.changed),
        )
        for d in diffs
    ]
    out = [table(("category", "digest", "added", "removed", "changed"), rows)]
    for d in diffs:
        if d.equal:
            continue
        out += ["", f"{d.category}:"]
        out += [f"  - {entry_text(e)}" for e in d.removed[:limit]]
        out += [f"  + {entry_text(e)}" for e in d.added[:limit]]
        for old, new in d.changed[:limit]:
            out += [f"  ~ {entry_text(old)}", f"    -> {entry_text(new)}"]
    return "\n".join(out)
