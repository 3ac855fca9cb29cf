"""State that truly cannot be carried into a new vswitchd: found, named, and left out (pure).

An entry is *uncarried* when it is valid but OVS offers no way to recreate it in
another process (e.g. a conntrack entry whose recorded state no packet sequence
reaches).  Such an entry does not block an upgrade (``[upgrade] uncarried =
"report"``, the default): the restore skips it, the upgrade record and the journal
name it as an anomaly and count it, and every read-back compares the snapshot
*without exactly these entries* (:func:`carried_only`) with what the new process
holds.  With ``"refuse"`` the upgrade is refused before anything changes.

Bad input (a malformed or hostile entry) is not uncarried: it is an error.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ovsndu.errors import RestoreError
from ovsndu.model import Conntrack, Entry, FdbEntry, Port, Snapshot
from ovsndu.ovs.replay import children_of, orphan_reason, replay_reason

MODES = ("report", "refuse")


@dataclass(frozen=True, slots=True)
class Uncarried:
    """One entry that cannot be carried, and why."""

    category: str
    entry: Entry
    reason: str

    def line(self) -> str:
        """One line for the record and the journal."""
        return f"uncarried {self.category}: {self.reason}"


def _conntrack(snap: Snapshot) -> Callable[[Entry], str | None]:
    entries = [e for e in snap.categories["conntrack"] if isinstance(e, Conntrack)]
    kids = children_of(entries)

    def check(entry: Entry) -> str | None:
        assert isinstance(entry, Conntrack)
        orphan = orphan_reason(entry, entries)
        if orphan is not None:
            return orphan
        return replay_reason(entry, kids.get((entry.zone, entry.orig), ()))

    return check


def _fdb(snap: Snapshot) -> Callable[[Entry], str | None]:
    mirror_outputs = {(p.bridge, str(p.ofport)): p.port for p in snap.categories["ports"]
                      if isinstance(p, Port) and p.mirror_output}

    def check(entry: Entry) -> str | None:
        assert isinstance(entry, FdbEntry)
        port = mirror_outputs.get((entry.bridge, entry.port))
        if entry.static or port is None:
            return None
        return (f"dynamic MAC {entry.mac} vlan {entry.vlan} on {entry.bridge} port {port}, "
                f"a mirror's output port: the bridge drops frames arriving there before "
                f"learning, so nothing can learn it again")

    return check


# category -> (snapshot -> a check returning the reason an entry cannot be carried, or None).
# Helpers owning other categories add theirs here.
CHECKS: dict[str, Callable[[Snapshot], Callable[[Entry], str | None]]] = {
    "conntrack": _conntrack,
    "fdb": _fdb,
}


def find_uncarried(snap: Snapshot, *, replay_conntrack: bool = True) -> tuple[Uncarried, ...]:
    """Every entry of *snap* that cannot be carried, in canonical order.

    *replay_conntrack*: False when conntrack lives in the kernel (it survives there and
    is not replayed, so nothing of it is uncarried).  The answer for the last snapshot
    asked about is kept while that snapshot lives (the verification and the record ask
    about the same final read: 100k conntrack entries, ~0.3 s each).
    """
    if _last is not None and _last[0]() is snap and _last[1] == replay_conntrack:
        return _last[2]
    found = _find(snap, replay_conntrack)
    _remember(snap, replay_conntrack, found)
    return found


_last: tuple[weakref.ref[Snapshot], bool, tuple[Uncarried, ...]] | None = None


def _remember(snap: Snapshot, replay_conntrack: bool, found: tuple[Uncarried, ...]) -> None:
    global _last
    _last = (weakref.ref(snap), replay_conntrack, found)


def _find(snap: Snapshot, replay_conntrack: bool) -> tuple[Uncarried, ...]:
    out = []
    for category, make_check in CHECKS.items():
        if category == "conntrack" and not replay_conntrack:
            continue
        check = make_check(snap)
        for entry in snap.categories[category]:
            reason = check(entry)
            if reason is not None:
                out.append(Uncarried(category, entry, reason))
    return tuple(out)


def carriable(snap: Snapshot, category: str, entries: Iterable[Entry]
              ) -> tuple[list[Entry], tuple[Uncarried, ...]]:
    """Split some of *snap*'s entries of one category (e.g. those a catch-up adds) into
    the carriable ones and the uncarried ones, checking only those entries."""
    make_check = CHECKS.get(category)
    if make_check is None:
        return list(entries), ()
    check = make_check(snap)
    keep: list[Entry] = []
    dropped: list[Uncarried] = []
    for entry in entries:
        reason = check(entry)
        if reason is None:
            keep.append(entry)
        else:
            dropped.append(Uncarried(category, entry, reason))
    return keep, tuple(dropped)


def carried_only(snap: Snapshot, uncarried: Iterable[Uncarried] | None = None) -> Snapshot:
    """*snap* without exactly the *uncarried* entries (default: :func:`find_uncarried`).

    What a read-back after a restore must equal.  An entry is removed only when its
    canonical encoding equals an uncarried one's, so nothing else escapes the check.
    """
    found = find_uncarried(snap) if uncarried is None else tuple(uncarried)
    if not found:
        return snap
    by_category: dict[str, set[bytes]] = {}
    for u in found:
        by_category.setdefault(u.category, set()).add(u.entry.canonical())
    for category, drop in by_category.items():
        snap = snap.replace(category, [e for e in snap.categories[category]
                                       if e.canonical() not in drop])
    return snap


def counts(uncarried: Iterable[Uncarried]) -> dict[str, int]:
    """Uncarried entries per category."""
    out: dict[str, int] = {}
    for u in uncarried:
        out[u.category] = out.get(u.category, 0) + 1
    return out


def refuse_if_any(uncarried: tuple[Uncarried, ...], mode: str) -> None:
    """With *mode* ``"refuse"``, a RestoreError naming the first uncarried entry and the count."""
    if mode not in MODES:
        raise ValueError(f"uncarried mode {mode!r} is not one of {MODES}")
    if mode == "refuse" and uncarried:
        first = uncarried[0]
        raise RestoreError(first.category, f"{len(uncarried)} entries cannot be carried "
                           f"(upgrade.uncarried = \"refuse\"), e.g. {first.reason}")
