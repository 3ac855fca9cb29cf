"""Conntrack entries by kind: what the rehearsal replays of a large conntrack table.

An entry's *kind* is everything about it but what only makes connections distinct:
the addresses (kept as their family), the ports and the ICMP id (kept as present or
not), the NAT addresses and ports (kept as the NAT's side, family, range and port
presence), the mark and labels (kept as set or not), and the timeout.  Everything else
is part of the kind: the protocol, the zone, the TCP states, flags and window scales,
the ICMP type and code, the helper, whether the entry is related to a parent.

:func:`representatives` keeps one entry of each kind, and every entry that has a
helper or a parent (an ALG connection and its related ones are replayed together:
a related entry needs its parent's expectation).  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from ovsndu.model.state import Conntrack

# Tuple fields that only make connections distinct: kept as "present".
_DISTINCT = frozenset({"sport", "dport", "id"})
_ADDRESSES = frozenset({"src", "dst"})


def _family(address: str) -> str:
    return "6" if address.count(":") > 1 or address.startswith("[") else "4"


def tuple_shape(text: str) -> tuple[tuple[str, str], ...]:
    """A ``src=..,dst=..,sport=..`` tuple with its distinguishing values masked."""
    out = []
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key in _ADDRESSES:
            value = _family(value)
        elif key in _DISTINCT:
            value = "n"
        out.append((key, value))
    return tuple(out)


def nat_shape(nat: str) -> tuple[tuple[str, str, bool, bool], ...]:
    """Per NAT part (``snat=``, ``dnat=``): its side, address family, whether it is a
    range, whether it names ports; the addresses and ports themselves masked."""
    out = []
    for part in nat.split(",") if nat else ():
        key, _, value = part.partition("=")
        family = _family(value)
        port = ("]:" in value) if family == "6" else (":" in value)
        out.append((key, family, "-" in value, port))
    return tuple(out)


def kind(entry: Conntrack) -> tuple[object, ...]:
    """The entry's kind (see the module's docstring)."""
    return (entry.protocol, entry.zone, entry.mark != 0, int(entry.labels, 16) != 0,
            entry.state_orig, entry.state_reply, nat_shape(entry.nat), entry.helper,
            bool(entry.parent), entry.tcp_flags_orig, entry.tcp_flags_reply,
            entry.wscale_orig, entry.wscale_reply, tuple_shape(entry.orig),
            tuple_shape(entry.reply))


def representatives(entries: Iterable[Conntrack]) -> list[Conntrack]:
    """One entry of each kind (the first met), plus every entry with a helper or a parent,
    in the order given."""
    seen: set[tuple[object, ...]] = set()
    out = []
    for e in entries:
        if e.helper or e.parent:
            out.append(e)
            continue
        k = kind(e)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out
