"""The OpenFlow changes seen after the final read, applied on top of it (pure).

While the final catch-up reads the old vswitchd, a monitoring connection per bridge
follows every change other connections make (ovs/ofmonitor.py): flow monitor events
and forwarded group and meter mods, in the order the switch made them, up to the
moment the process is stopped.  The events start before the read, so some of them
are already in it; each names its whole entry (or its removal), so replaying all of
them in order on top of the read gives what the process held when it stopped:

- an entry with no event keeps the read's version;
- an entry whose last event puts it gets that event's content — but the read's
  version when the two are equal, because flow monitor events do not carry a rule's
  flags (``send_flow_rem``, ``no_packet_counts``...) or importance: an unchanged
  rule keeps them, a rule modified in the window keeps those of the version it
  replaces, and a rule *added* in the window has none;
- an entry whose last event removes it is gone.

Changes whose content no event gives (an OpenFlow 1.5 group ``insert_bucket`` or
``remove_bucket``) are reported, not guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ovsndu.model.snapshot import Snapshot
from ovsndu.model.state import Entry, Flow

WINDOW_CATEGORIES = ("flows", "groups", "meters")


@dataclass(frozen=True, slots=True)
class Change:
    """One change on one bridge: ``put`` an entry, ``delete`` one (*entry* names it),
    ``clear`` the category on *bridge*, or ``unknown`` (*what* says which)."""

    category: str
    op: str
    bridge: str
    entry: Entry | None = None
    what: str = ""


def _same_but_flags(old: Entry, new: Entry) -> bool:
    if isinstance(old, Flow) and isinstance(new, Flow):
        old = dataclasses.replace(old, flags=(), importance=0)
    return old.stable() == new.stable()


@dataclass(frozen=True, slots=True)
class Settled:
    """The final read with the window replayed, not yet built: *read*'s own categories
    (sorted, digested) and, in *changed*, those read later or changed by the window
    (unsorted).  The handover compares it with the snapshot without a build (100k
    conntrack entries take ~1 s of Python to sort and digest) and builds it after the
    lift."""

    read: Snapshot
    changed: Mapping[str, Sequence[Entry]]

    def categories(self) -> dict[str, Sequence[Entry]]:
        """Every category's entries (*read*'s or the changed ones)."""
        return {**self.read.categories, **self.changed}

    def known_digests(self) -> dict[str, str]:
        """The digests known without a build: those of the categories *read* holds."""
        return {c: self.read.digest(c) for c in self.read.categories if c not in self.changed}

    def build(self) -> Snapshot:
        """The final snapshot (one build: *read*'s own categories are not sorted again)."""
        if not self.changed:
            return self.read
        return Snapshot.build(self.read.vswitchd, self.categories(), known=self.read)


def replay_window(snap: Snapshot, changes: Iterable[Change],
                  replaced: Mapping[str, Sequence[Entry]] | None = None
                  ) -> tuple[Settled, dict[str, int], list[str]]:
    """*snap* (the final read), its categories in *replaced* read later instead, with
    *changes* replayed in order, not built; per ``category.op`` the number of changes
    seen, and what could not be applied (one text each)."""
    cats: dict[str, Sequence[Entry]] = {**snap.categories, **(replaced or {})}
    tables: dict[str, dict[tuple[object, ...], Entry]] = {}
    counts: dict[str, int] = {}
    unknown: list[str] = []
    for change in changes:
        if change.category not in WINDOW_CATEGORIES:
            raise ValueError(f"no window changes for {change.category!r}")
        name = f"{change.category}.{change.op}"
        counts[name] = counts.get(name, 0) + 1
        table = tables.get(change.category)
        if table is None:
            table = tables[change.category] = {e.identity(): e
                                               for e in cats[change.category]}
        if change.op == "clear":
            for key in [k for k, e in table.items()
                        if getattr(e, "bridge", None) == change.bridge]:
                del table[key]
        elif change.op == "unknown":
            unknown.append(f"{change.category} on {change.bridge}: {change.what}")
        elif change.entry is None:
            raise ValueError(f"a {change.op} change without its entry")
        elif change.op == "delete":
            table.pop(change.entry.identity(), None)
        elif change.op == "put":
            key, new = change.entry.identity(), change.entry
            old = table.get(key)
            if old is not None and isinstance(old, Flow) and isinstance(new, Flow):
                if _same_but_flags(old, new):
                    new = old
                else:  # modified in the window: the flags it had stay
                    new = dataclasses.replace(new, flags=old.flags, importance=old.importance)
            elif old is not None and _same_but_flags(old, new):
                new = old
            table[key] = new
        else:
            raise ValueError(f"unknown change {change.op!r}")
    changed: dict[str, Sequence[Entry]] = dict(replaced or {})
    changed.update({category: list(table.values()) for category, table in tables.items()})
    return Settled(snap, changed), counts, unknown


def apply_window(snap: Snapshot, changes: Iterable[Change],
                 replaced: Mapping[str, Sequence[Entry]] | None = None
                 ) -> tuple[Snapshot, dict[str, int], list[str]]:
    """:func:`replay_window`, built (one build of the result; 50k rules take ~0.4 s of
    Python per build)."""
    settled, counts, unknown = replay_window(snap, changes, replaced)
    return settled.build(), counts, unknown
