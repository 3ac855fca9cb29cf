"""The restore's steps outside OpenFlow: datapath ports, static FDB, routes, kernel conntrack.

Functions of :class:`ovsndu.ovs.restore.Restorer`'s apply step, given its unixctl
connection (*appctl*) and its error-naming call (*call*: category, command, args;
RestoreError on failure): the kernel's datapath port numbers must not have changed;
static FDB entries and user routes are added (a route on a dummy device gets its
source address back first); for the kernel datapath, conntrack is not replayed but
every entry must still be in the kernel.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from ovsndu.errors import OvsnduError, RestoreError, VswitchdError
from ovsndu.model import Conntrack, FdbEntry, Port, Route, Snapshot
from ovsndu.ovs import appctl_parsers
from ovsndu.ovs.readers import BridgeInfo
from ovsndu.ovs.restore_plan import USERSPACE_DATAPATHS

Appctl = Callable[..., str]
"""A unixctl call: ``appctl(command, *args)`` → its output (VswitchdError on failure)."""
Call = Callable[..., str]
"""``call(category, command, *args)``: as *appctl*, failures as RestoreError(category)."""


def check_dp_ports(snap: Snapshot, bridges: list[BridgeInfo], appctl: Appctl) -> None:
    """The kernel keeps datapath port numbers: they must not have changed."""
    kernel = {b.name for b in bridges if b.datapath_type not in USERSPACE_DATAPATHS}
    if not kernel:
        return
    dp_ports = appctl_parsers.parse_dpif_ports(appctl("dpif/show"))
    for want in snap.categories["ports"]:
        assert isinstance(want, Port)
        got = dp_ports.get((want.bridge, want.interface))
        if want.bridge in kernel and want.dp_port is not None and got != want.dp_port:
            raise RestoreError("ports", f"interface {want.interface} of {want.bridge} has "
                               f"datapath port {got}, the snapshot {want.dp_port}")


def kernel_conntrack(snap: Snapshot) -> None:
    """Kernel datapath: nothing to replay; every entry must still be in the kernel."""
    from ovsndu.ovs.kernel_ct import missing_from_kernel

    entries = [e for e in snap.categories["conntrack"] if isinstance(e, Conntrack)]
    try:
        missing = missing_from_kernel(entries)
    except OvsnduError as exc:
        raise RestoreError("conntrack", str(exc)) from None
    if missing:
        first = missing[0]
        raise RestoreError("conntrack", f"{len(missing)} of {len(entries)} entries are no "
                           f"longer in the kernel, e.g. zone {first.zone} "
                           f"{first.protocol} {first.orig}")


def fdb_statics(snap: Snapshot, names: dict[tuple[str, str], str], call: Call) -> None:
    """The static FDB entries (``fdb/add``); learned ones are replayed as packets."""
    for e in snap.categories["fdb"]:
        assert isinstance(e, FdbEntry)
        if e.static:
            call("fdb", "fdb/add", e.bridge, names[(e.bridge, e.port)], str(e.vlan), e.mac)


def user_routes(snap: Snapshot, appctl: Appctl, call: Call) -> None:
    """The user routes (``ovs/route/add``) the target lacks."""
    have = {r.canonical() for r in appctl_parsers.parse_routes(appctl("ovs/route/show"))
            if r.kind == "user"}
    for r in snap.categories["routes"]:
        assert isinstance(r, Route)
        if r.kind != "user" or r.canonical() in have:
            continue
        args = [r.prefix, r.dev]
        if r.gateway:
            args.append(r.gateway)
        if r.pkt_mark:
            args.append(f"pkt_mark={r.pkt_mark}")
        try:
            appctl("ovs/route/add", *args)
        except VswitchdError:
            # A dummy device keeps its address in the old process, not in a kernel:
            # give it the route's source address again, then retry.
            if not (r.src and dummy_address(r, appctl)):
                raise
            call("routes", "ovs/route/add", *args)


def dummy_address(route: Route, appctl: Appctl) -> bool:
    """Assign *route*'s source address to its dummy device; False when not dummy."""
    assert route.src is not None
    plen = 128 if ":" in route.src else 32
    if route.gateway:
        gw = ipaddress.ip_address(route.gateway)
        while plen > 0 and gw not in ipaddress.ip_network(f"{route.src}/{plen}",
                                                           strict=False):
            plen -= 1
    command = "netdev-dummy/ip6addr" if ":" in route.src else "netdev-dummy/ip4addr"
    try:
        appctl(command, route.dev, f"{route.src}/{plen}")
    except VswitchdError:
        return False
    return True
