"""Which conntrack entries are replayed inside the gap, which after it, and the repair (pure).

Replaying 100k entries costs ~2 s of vswitchd time (packet-outs through ``ct()``), far
more than the rest of the gap.  Only connections that are carrying traffic need their
entry the moment forwarding resumes, so the live install splits the table:

* **first** (in the install bundle, inside the gap): every entry that was active within
  :data:`HOT_WINDOW_S` seconds when the snapshot was read, and every entry whose idle
  time cannot be told (handshakes, closing states, ALG parents and related entries);
* **later** (after ``flow-restore-wait`` is lifted, forwarding running): the idle rest,
  most recently active first.

An idle connection may wake up before its entry is replayed.  Its packet then meets an
empty conntrack and is judged ``+new``; what the pipeline does with it is the
pipeline's:

* a stateful ACL that admits new connections only from the client side drops a reply-
  side packet (TCP retransmits, and the retransmission finds the replayed entry; one
  UDP datagram is lost);
* an ACL that commits new connections from both sides commits the *reply* packet as a
  new connection in the wrong direction (orig = the server side), and a midstream TCP
  packet from the client side is committed without a handshake.

The replay of such an entry then finds a connection that is not the one recorded.  The
**repair** reads the table after the deferred replay, and every deferred entry that is
missing by identity or whose reply tuple or NAT differs (what traffic cannot change,
:mod:`ovsndu.model.carried`) has its tuple flushed (both directions) and is replayed
again.  The packets misjudged meanwhile are not undone; they are counted (``repaired``)
and the count is recorded.  Idle-time estimation uses OVS 3.1's default userspace
timeouts; a ``CT_Timeout_Policy`` with other values moves entries between the two
sets (correctness is kept by the repair, only the gap or the window changes).
"""

from __future__ import annotations

from collections.abc import Iterable

from ovsndu.model import Conntrack

#: An entry seen by traffic within this many seconds before the snapshot goes first.
HOT_WINDOW_S = 5.0

# OVS 3.1 userspace conntrack default timeouts (lib/conntrack-tp.c), seconds.
TCP_ESTABLISHED_S = 86400
FIRST_S = 60      # UDP / ICMP / other: first packet only
REPLIED_S = 30    # UDP / ICMP / other: seen both ways


def idle_seconds(entry: Conntrack) -> float | None:
    """How long *entry* had seen no packet when read; None when it cannot be told."""
    if entry.timeout is None or entry.helper or entry.parent:
        return None
    if entry.protocol == "tcp":
        if (entry.state_orig, entry.state_reply) != ("ESTABLISHED", "ESTABLISHED"):
            return None
        return float(max(0, TCP_ESTABLISHED_S - entry.timeout))
    full = FIRST_S if entry.timeout > REPLIED_S else REPLIED_S
    return float(max(0, full - entry.timeout))


def split_for_gap(entries: Iterable[Conntrack], window: float = HOT_WINDOW_S
                  ) -> tuple[list[Conntrack], list[Conntrack]]:
    """(first, later): entries replayed inside the gap, and the idle ones replayed after it
    (most recently active first).  An entry whose parent stays in *first* stays there too."""
    first: list[Conntrack] = []
    later: list[tuple[float, Conntrack]] = []
    for e in entries:
        idle = idle_seconds(e)
        if idle is None or idle < window:
            first.append(e)
        else:
            later.append((idle, e))
    later.sort(key=lambda pair: pair[0])
    return first, [e for _, e in later]


def misjudged(wanted: Iterable[Conntrack], found: Iterable[Conntrack]) -> list[Conntrack]:
    """Entries of *wanted* missing from *found* by identity, or there with another reply
    tuple or NAT: traffic met them before their replay (or they ended meanwhile)."""
    have = {e.identity(): e for e in found}
    out = []
    for e in wanted:
        got = have.get(e.identity())
        if got is None or got.reply != e.reply or got.nat != e.nat:
            out.append(e)
    return out


_TUPLE_KEYS = {"src": "nw_src", "dst": "nw_dst", "sport": "tp_src", "dport": "tp_dst"}
_ICMP_KEYS = {"type": "icmp_type", "code": "icmp_code", "id": "icmp_id"}


def flush_tuple(entry: Conntrack, direction: str = "orig") -> str:
    """The ``ct-tuple`` argument of ``dpctl/flush-conntrack`` naming *entry*'s
    *direction* (``orig`` or ``reply``) tuple."""
    from ovsndu.ovs.appctl_parsers import CT_PROTOCOLS

    text = entry.orig if direction == "orig" else entry.reply
    kv = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    v6 = ":" in kv.get("src", "")
    proto = CT_PROTOCOLS.get(entry.protocol) or int(entry.protocol)
    parts = []
    for key, value in kv.items():
        if key in ("src", "dst"):
            parts.append(f"ct_{'ipv6' if v6 else 'nw'}_{key}={value}")
        elif key in ("sport", "dport"):
            parts.append(f"ct_{_TUPLE_KEYS[key]}={value}")
        elif key in _ICMP_KEYS:
            parts.append(f"{_ICMP_KEYS[key]}={value}")
    parts.append(f"ct_nw_proto={proto}")
    return ",".join(parts)
