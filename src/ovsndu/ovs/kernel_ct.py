"""The kernel's connection tracking, read through netlink (pyroute2).

With the kernel (``system``) datapath, conntrack lives in the kernel and survives a
vswitchd restart: nothing is replayed, and the restore verifies instead that every
entry of the snapshot is still in the kernel, by the key ovsndu's model uses
(zone, protocol word, original tuple text as ``dpctl/dump-conntrack`` prints it).
"""

from __future__ import annotations

from collections.abc import Iterable

from pyroute2 import Conntrack as NetlinkConntrack
from pyroute2.netlink.exceptions import NetlinkError

from ovsndu.errors import BackendError
from ovsndu.model import Conntrack

PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}
Key = tuple[int, str, str]


def kernel_conntrack_keys() -> set[Key]:
    """(zone, protocol, original tuple) of every entry in this namespace's kernel table."""
    keys: set[Key] = set()
    try:
        ct = NetlinkConntrack()
        try:
            for entry in ct.dump_entries():
                o = entry.tuple_orig
                proto = PROTOCOLS.get(o.proto, str(o.proto))
                if o.proto in (1, 58):
                    text = (f"src={o.saddr},dst={o.daddr},id={o.icmp_id},type={o.icmp_type},"
                            f"code={o.icmp_code}")
                else:
                    text = f"src={o.saddr},dst={o.daddr},sport={o.sport},dport={o.dport}"
                keys.add((entry.zone or 0, proto, text))
        finally:
            ct.close()
    except (NetlinkError, OSError) as exc:
        raise BackendError(f"cannot read the kernel's conntrack table: {exc}") from None
    return keys


def missing_from_kernel(entries: Iterable[Conntrack]) -> list[Conntrack]:
    """The snapshot entries the kernel no longer holds."""
    have = kernel_conntrack_keys()
    return [e for e in entries if (e.zone, e.protocol, e.orig) not in have]
