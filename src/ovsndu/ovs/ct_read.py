"""Reading a userspace datapath's conntrack table in short holds of vswitchd's main thread.

What OVS 3.1 does (lib/dpctl.c, lib/conntrack.c; measured with ``benchmarks.ct_hold``,
docs/performance.md): ``dpctl/dump-conntrack`` runs in vswitchd's main thread, which
also polls the netdev datapath's non-PMD ports, so nothing is forwarded while it
converts and formats the table — at 100k entries one full dump silences traffic for
~250–380 ms (a 19.5 MB reply).  With ``zone=N`` it still walks every entry but converts
and formats only that zone's (a walk of 100k entries ~5 ms; ~50 ms per 12.5k entries
formatted).  ``dpctl/ct-get-nconns`` reads a counter.

So a userspace table is read zone by zone.  The zones are the caller's (the zones
the flows name in ``ct()`` actions: the snapshot reads conntrack after the flows), the
ones the last read of the same datapath found here (of this process or the one it
replaces: a standby taking over has the same zones) and those hinted
(:func:`hint_zones`: the client, of the snapshot it restores); the sum read is checked
against ``ct-get-nconns`` taken before and after.  That counter also counts entries
that have expired but are not swept yet (a dump skips them; OVS 3.1's sweeper runs
every 20 s, so a table whose connections come and go nearly always has some): a sum
short of it is checked against ``ct-stats-show``, which counts what a dump shows (one
walk of the table, no big reply).  Entries in a zone nobody knew (set from a register,
say) make the sum fall short of that too: then one full dump is taken (and its zones
are remembered for the next read).  The kernel datapath's table is the kernel's (a dump does
not hold forwarding): read whole, as before.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TypeVar

import structlog

from ovsndu.errors import ParseError
from ovsndu.model import Conntrack, Entry, Flow
from ovsndu.ovs import appctl_parsers, parsers
from ovsndu.ovs.unixctl import Unixctl

log = structlog.get_logger("ovsndu.ct_read")

T = TypeVar("T")

# datapath -> the zones its last read found
_ZONES: dict[str, frozenset[int]] = {}
# zones a process expects in any datapath (e.g. the client, of the state it restores)
_HINT: set[int] = set()
# stats of the last read per (pid, datapath): entries, dumps, whether it fell back
LAST: dict[tuple[int | None, str], dict[str, int]] = {}
# per (pid, datapath): expired entries not swept yet that the last read's count held
_UNSWEPT: dict[tuple[int | None, str], int] = {}
# per (pid, datapath): the longest single dump call of the last read, seconds
_LONGEST: dict[tuple[int | None, str], float] = {}


def known_zones(dp: str) -> frozenset[int]:
    """The zones the last read of *dp* found (empty if none yet)."""
    return _ZONES.get(dp, frozenset())


def hint_zones(zones: Iterable[int]) -> None:
    """Zones every later read of this process tries first (those of a snapshot being
    restored: its read-back then goes zone by zone from the start)."""
    _HINT.update(zones)


_ZONE_IN_ACTIONS = re.compile(r"\bct\([^)]*?\bzone=(\d+)")


def zones_named(flows: Iterable[Entry]) -> set[int]:
    """The zones flows name literally in a ``ct()`` action (``zone=REG`` ones are learnt
    from a full dump instead)."""
    return {int(z) for f in flows if isinstance(f, Flow)
            for z in _ZONE_IN_ACTIONS.findall(f.actions)}


def forget_zones() -> None:
    """Forget every zone learnt or hinted (the next read of each datapath is a full dump)."""
    _ZONES.clear()
    _HINT.clear()


def read_conntrack(appctl: Unixctl, dp: str, zones: Collection[int] = (), *,
                   detail: bool = True) -> Sequence[Entry]:
    """Every conntrack entry of datapath *dp*; zone by zone on a userspace datapath
    when the zones are known (*zones* and the last read's), else one full dump.
    *detail* False: without ``-m -s`` (no TCP states of each side, window scales, flags
    or timeouts: a presence check; the text, and so each hold, is ~40 % shorter)."""
    key = (appctl.pid, dp)
    flags = ("-m", "-s") if detail else ()
    if dp.startswith("system@"):
        entries = _full(appctl, dp, flags)
    else:
        known = set(zones) | _ZONES.get(dp, frozenset()) | _HINT
        _UNSWEPT[key], _LONGEST[key] = 0, 0.0
        by_zone = _by_zone(appctl, dp, sorted(known), flags) if known else None
        if by_zone is None and known:  # one long hold of the forwarding thread: said
            log.info("ct_read.full_dump", event_kind="ct_full_dump", vswitchd_pid=appctl.pid,
                     datapath=dp, zones=len(known),
                     reason="the zones read did not add up to the table's count twice")
        entries = by_zone if by_zone is not None else _full_once(appctl, dp, flags)
        LAST[key] = {"entries": len(entries), "zones": len(known),
                     "full_dump": int(by_zone is None)}
    # The zones found, and the caller's (the flows' zones, even while empty: a
    # connection may enter one before the next read).
    _ZONES[dp] = frozenset(e.zone for e in entries if isinstance(e, Conntrack)) | set(zones)
    return entries


def longest_hold_s(pid: int | None) -> float:
    """The longest single ``dump-conntrack`` call of the last read of each userspace
    datapath of process *pid* (its wall time: a bound on how long it held the main
    thread, and so forwarding on the ports that thread polls); 0 if none known."""
    return max((v for (p, _dp), v in _LONGEST.items() if p == pid), default=0.0)


def _dump(appctl: Unixctl, dp: str, *args: str) -> str:
    """One ``dpctl/dump-conntrack`` call of a userspace datapath, its time kept."""
    began = time.monotonic()
    text = appctl("dpctl/dump-conntrack", *args)
    key = (appctl.pid, dp)
    _LONGEST[key] = max(_LONGEST.get(key, 0.0), time.monotonic() - began)
    return text


def unswept(appctl: Unixctl, dp: str) -> int:
    """How many of ``ct-get-nconns`` were expired entries not swept yet at the last read
    of *dp* by this connection's process (0 if not known)."""
    return _UNSWEPT.get((appctl.pid, dp), 0)


def nconns(appctl: Unixctl, dp: str) -> int:
    """``dpctl/ct-get-nconns``: OVS's counter of *dp*'s entries (expired ones not
    swept yet included); ParseError when it prints no number."""
    text = appctl("dpctl/ct-get-nconns", dp).strip()
    try:
        return int(text)
    except ValueError:
        raise ParseError("conntrack count", text[:200],
                                 "ct-get-nconns printed no number") from None


def visible_count(appctl: Unixctl, dp: str) -> int:
    """How many entries a dump of *dp* shows now (``ct-stats-show``: expired entries
    not yet swept are not counted, as ``ct-get-nconns`` counts them)."""
    return appctl_parsers.parse_ct_stats_total(appctl("dpctl/ct-stats-show", dp))


def _adds_up(appctl: Unixctl, dp: str, read: int, before: int, after: int) -> int | None:
    """Whether *read* entries are the whole table, ``ct-get-nconns`` being *before* and
    *after* around the read: None if not, else how many of *after* are expired entries
    not swept yet.  Short of both counts, the shortfall may be such entries: then the
    read must reach what a dump shows now, less the table's growth during the read
    (entries created in a zone after it was read)."""
    if min(before, after) <= read <= max(before, after):
        return 0
    if read > max(before, after):
        return None
    shown = visible_count(appctl, dp)
    return max(0, after - shown) if shown - max(0, after - before) <= read else None


def _by_zone(appctl: Unixctl, dp: str, zones: list[int], flags: tuple[str, ...]
             ) -> list[Entry] | None:
    """The table read one zone a call, or None when it does not add up to OVS's count
    (a zone not in *zones* holds entries) even read twice."""
    key = (appctl.pid, dp)
    for _ in range(2):
        before = nconns(appctl, dp)
        entries: list[Entry] = []
        for zone in zones:
            entries += appctl_parsers.parse_conntrack(
                _dump(appctl, dp, *flags, dp, f"zone={zone}"))
        after = nconns(appctl, dp)
        if (unswept := _adds_up(appctl, dp, len(entries), before, after)) is not None:
            _UNSWEPT[key] = unswept
            return entries
        if len(entries) < min(before, after) and before == after:
            return None  # entries in a zone not read: no second try helps
    return None


def _full_once(appctl: Unixctl, dp: str, flags: tuple[str, ...]) -> Sequence[Entry]:
    """One full dump checked against ``ct-get-nconns`` before and after it (a table that
    changes while it is read, e.g. entries expiring, is not read again: each read is a
    hold); :func:`_full` when it does not add up."""
    before = nconns(appctl, dp)
    entries = appctl_parsers.parse_conntrack(_dump(appctl, dp, *flags, dp))
    after = nconns(appctl, dp)
    if (unswept := _adds_up(appctl, dp, len(entries), before, after)) is not None:
        _UNSWEPT[(appctl.pid, dp)] = unswept
        return entries
    return _full(appctl, dp, flags)


def _full(appctl: Unixctl, dp: str, flags: tuple[str, ...]) -> Sequence[Entry]:
    def read() -> Sequence[Entry]:
        if dp.startswith("system@"):  # the kernel's table: its dump holds no thread of ours
            return appctl_parsers.parse_conntrack(appctl("dpctl/dump-conntrack", *flags, dp))
        return appctl_parsers.parse_conntrack(_dump(appctl, dp, *flags, dp))

    return counted(read, lambda: visible_count(appctl, dp), f"conntrack of {dp}",
                   "dpctl/ct-stats-show")


def counted(read: Callable[[], Sequence[T]], count: Callable[[], int], what: str,
            source: str) -> Sequence[T]:
    """*read* entries and check their number against OVS's own *count* of them.

    The reads are not atomic, so the count is taken before and after: the number read
    must lie between the two.  Churn (a flow expiring, a connection closing) can still
    defeat that; it is read again, three times at most.  If OVS's own count kept moving
    through every attempt, the table is changing under the reads (new connections
    arriving while others expire) and no read can match a count exactly: the read is
    taken as it is (the parsers turn every line into one entry or raise, so nothing is
    dropped unseen).  A table whose count stood still must match it exactly.
    """
    entries, total = read(), count()
    seen = {total}
    for _ in range(3):
        if len(entries) == total:
            return entries
        before = count()
        entries = read()
        total = count()
        seen |= {before, total}
        if min(before, total) <= len(entries) <= max(before, total):
            return entries
    if len(seen) > 1:
        return entries
    parsers.check_count(what, len(entries), total, source)
    return entries
