"""The verification rule for a switch that keeps forwarding: was anything lost? (pure)

*want* is what the old process held when it stopped (the snapshot, brought up to date
by the final catch-up); *got* is a read-back of the new process, taken while traffic
flows again.  The rule, per category:

- **Control plane** (ports, tunnel neighbours, flows, meters, groups, TLV map, user
  routes): *got* equals *want*.  Traffic cannot change these, and nothing may write
  them before the read-back (controllers are kept out until it is done).
- **Traffic state** (conntrack, FDB): every entry of *want* is in *got* (by identity),
  unless it ended naturally in between — its remaining timeout (conntrack) or its age
  against the bridge's aging time (FDB) ran out within *elapsed* seconds.  Entries
  created by traffic after forwarding resumed are expected, and traffic may move an
  entry on (a TCP state, a mark or label set by the pipeline, a MAC seen on another
  port).  What traffic cannot change is still compared: a conntrack entry's reply
  tuple and NAT, an FDB entry's static flag.

Entries that cannot be carried at all (:mod:`ovsndu.ovs.uncarried`) are removed from
*want* by the caller first (``carried_only``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ovsndu.model.diff import diff_category
from ovsndu.model.snapshot import Snapshot
from ovsndu.model.state import CATEGORIES, Conntrack, Entry, FdbEntry

TRAFFIC_STATE = ("conntrack", "fdb")
CONTROL_PLANE = tuple(c for c in CATEGORIES if c not in TRAFFIC_STATE)
#: Timeouts and ages are printed in whole seconds: allow this much rounding.
SLACK_S = 2.0
DEFAULT_MAC_AGING_S = 300


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One category that failed the rule: entries lost and entries changed wrongly."""

    category: str
    missing: tuple[Entry, ...] = ()
    extra: tuple[Entry, ...] = ()
    changed: tuple[tuple[Entry, Entry], ...] = ()

    def describe(self, text: Callable[[Entry], str] = repr, limit: int = 3) -> str:
        """One line: counts, then the first few entries (each shown by *text*)."""
        short = text
        parts = [f"{len(self.missing)} missing, {len(self.extra)} extra, "
                 f"{len(self.changed)} changed"]
        parts += [f"missing {short(e)}" for e in self.missing[:limit]]
        parts += [f"extra {short(e)}" for e in self.extra[:limit]]
        parts += [f"changed {short(a)} -> {short(b)}" for a, b in self.changed[:limit]]
        return "; ".join(parts)


def ended_naturally(entry: Entry, elapsed: float,
                    mac_aging: Mapping[str, int] | None = None) -> bool:
    """Whether *entry* may have expired within *elapsed* seconds after it was read."""
    if isinstance(entry, Conntrack):
        return entry.timeout is not None and entry.timeout <= elapsed + SLACK_S
    if isinstance(entry, FdbEntry):
        if entry.static or entry.age is None:
            return False
        aging = (mac_aging or {}).get(entry.bridge, DEFAULT_MAC_AGING_S)
        return entry.age + elapsed + SLACK_S >= aging
    return False


def _traffic_may_change(before: Entry, after: Entry) -> bool:
    if isinstance(before, Conntrack) and isinstance(after, Conntrack):
        return before.reply == after.reply and before.nat == after.nat
    if isinstance(before, FdbEntry) and isinstance(after, FdbEntry):
        return before.static == after.static
    return False


def check_category(category: str, want: tuple[Entry, ...], got: tuple[Entry, ...], *,
                   elapsed: float = 0.0, mac_aging: Mapping[str, int] | None = None,
                   digests: tuple[str, str] | None = None) -> Shortfall | None:
    """Apply the rule to one category; None when nothing was lost (*digests*: both
    sides', when known: see :func:`ovsndu.model.diff.diff_category`)."""
    if category in TRAFFIC_STATE and (digests is None or digests[0] != digests[1]):
        decided, fast = _traffic_by_identity(category, want, got, elapsed, mac_aging)
        if decided:
            return fast
    d = diff_category(category, want, got, digests=digests)
    if category not in TRAFFIC_STATE:
        if d.equal:
            return None
        return Shortfall(category, d.removed, d.added, d.changed)
    missing = tuple(e for e in d.removed if not ended_naturally(e, elapsed, mac_aging))
    changed = tuple((a, b) for a, b in d.changed if not _traffic_may_change(a, b))
    if missing or changed:
        return Shortfall(category, missing, (), changed)
    return None


def _traffic_by_identity(category: str, want: tuple[Entry, ...], got: tuple[Entry, ...],
                         elapsed: float, mac_aging: Mapping[str, int] | None
                         ) -> tuple[bool, Shortfall | None]:
    """:func:`check_category`'s answer for a traffic category whose identities are unique
    on both sides (the rule, without encoding 200k entries to match them): an entry of
    *want* is missing when *got* has none of its identity (and it did not end
    naturally), changed when *got*'s differs in what traffic cannot change; in the
    order the diff reports them.  (False, None) when an identity repeats: undecided."""
    have: dict[tuple[Any, ...], Entry] = {}
    for e in got:
        have[e.identity()] = e
    if len(have) != len(got):
        return False, None
    seen: set[tuple[Any, ...]] = set()
    missing: list[tuple[str, Entry]] = []
    changed: list[tuple[str, tuple[Entry, Entry]]] = []
    for e in want:
        key = e.identity()
        seen.add(key)
        found = have.get(key)
        if found is None:
            if not ended_naturally(e, elapsed, mac_aging):
                missing.append((repr(key), e))
        elif not _traffic_may_change(e, found):
            changed.append((repr(key), (e, found)))
    if len(seen) != len(want):
        return False, None
    if not missing and not changed:
        return True, None
    missing.sort(key=_first)
    changed.sort(key=_first)
    return True, Shortfall(category, tuple(e for _, e in missing), (),
                           tuple(pair for _, pair in changed))


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


def check_carried(want: Snapshot, got: Snapshot, *, elapsed: float = 0.0,
                  mac_aging: Mapping[str, int] | None = None,
                  categories: Collection[str] = CATEGORIES) -> list[Shortfall]:
    """Every category (of *categories*, in canonical order) that lost something."""
    out = []
    for name in CATEGORIES:
        if name not in categories:
            continue
        s = check_category(name, want.categories[name], got.categories[name],
                           elapsed=elapsed, mac_aging=mac_aging,
                           digests=(want.digest(name), got.digest(name)))
        if s is not None:
            out.append(s)
    return out
