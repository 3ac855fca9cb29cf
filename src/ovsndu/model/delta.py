"""What changed in a vswitchd between two reads of it: the final catch-up's content (pure).

The snapshot is read while the old vswitchd still serves; controllers, operators and
traffic keep changing it until it stops.  The runner reads it once more at the last
moment it answers and hands the difference to the client, which applies it right after
the prepared install, still under flow-restore-wait (docs/upgrade.md).

- OpenFlow state (flows, groups, meters, TLV map): removed, added and changed entries
  (a change carries the new entry; identity says which one it replaces).
- Traffic state (conntrack, FDB): entries that appeared.  Entries that moved on or
  ended are traffic's business; the new process's traffic moves them on again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ovsndu.model.diff import diff_category
from ovsndu.model.snapshot import Snapshot
from ovsndu.model.state import Entry, entry_from_dict

OPENFLOW = ("tlv_mappings", "meters", "groups", "flows")
TRAFFIC = ("conntrack", "fdb")


@dataclass(frozen=True, slots=True)
class Delta:
    """Per category: entries to remove, to add, and to change (the new versions)."""

    removed: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)
    added: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)
    changed: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Whether nothing changed."""
        return not any(v for part in (self.removed, self.added, self.changed)
                       for v in part.values())

    def counts(self) -> dict[str, int]:
        """``category.kind`` → number of entries, non-zero ones only (for the record)."""
        out = {}
        for kind, part in (("removed", self.removed), ("added", self.added),
                           ("changed", self.changed)):
            for category, entries in part.items():
                if entries:
                    out[f"{category}.{kind}"] = len(entries)
        return out

    def of_bridge(self, kind: str, category: str, bridge: str) -> list[Entry]:
        """The entries of one kind and category that belong to *bridge*."""
        part = {"removed": self.removed, "added": self.added, "changed": self.changed}[kind]
        return [e for e in part.get(category, ()) if getattr(e, "bridge", None) == bridge]

    def to_dict(self) -> dict[str, Any]:
        """JSON primitives."""
        return {kind: {c: [e.to_dict() for e in entries] for c, entries in part.items()}
                for kind, part in (("removed", self.removed), ("added", self.added),
                                   ("changed", self.changed))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delta:
        """Inverse of :meth:`to_dict` (entries validated by the model)."""
        parts = {kind: {c: tuple(entry_from_dict(c, e) for e in entries)
                        for c, entries in data.get(kind, {}).items()}
                 for kind in ("removed", "added", "changed")}
        return cls(parts["removed"], parts["added"], parts["changed"])


def applied(snap: Snapshot, delta: Delta) -> Snapshot:
    """*snap* with *delta* applied: what the new process should hold after the catch-up."""
    out = snap
    for category in (*OPENFLOW, *TRAFFIC):
        gone = {e.identity() for e in (*delta.removed.get(category, ()),
                                       *delta.changed.get(category, ()))}
        kept = [e for e in snap.categories[category] if e.identity() not in gone]
        new = [*delta.changed.get(category, ()), *delta.added.get(category, ())]
        if gone or new:
            out = out.replace(category, [*kept, *new])
    return out


def delta_between(before: Snapshot, after: Snapshot) -> Delta:
    """What *after* (the final read) holds that *before* (the snapshot) did not."""
    removed: dict[str, tuple[Entry, ...]] = {}
    added: dict[str, tuple[Entry, ...]] = {}
    changed: dict[str, tuple[Entry, ...]] = {}
    for category in OPENFLOW:
        if before.digest(category) == after.digest(category):
            # Same digest, same stable content: nothing to diff (50k flows take ~2 s of
            # Python to diff, and the handover waits for the delta).
            removed[category] = added[category] = changed[category] = ()
            continue
        d = diff_category(category, before.categories[category], after.categories[category])
        removed[category], added[category] = d.removed, d.added
        changed[category] = tuple(new for _old, new in d.changed)
    for category in TRAFFIC:
        if before.digest(category) == after.digest(category):
            added[category] = ()
            continue
        known = {e.identity() for e in before.categories[category]}
        added[category] = tuple(e for e in after.categories[category]
                                if e.identity() not in known)
    return Delta(removed, added, changed)
