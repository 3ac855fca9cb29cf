"""What a restore will send, planned from a snapshot and the target's database alone.

:func:`build_plan` checks bridges and OpenFlow port numbers (flows name ports by
number), refuses what cannot be carried (per the configured mode), splits conntrack
into the share replayed in the gap and the deferred rest (:mod:`ovsndu.ovs.ct_defer`),
and builds, per bridge, the one bundle of groups and flows (encoded to bytes ahead
when asked) with the FDB learning and conntrack packet-outs.  Nothing is installed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ovsndu.errors import RestoreError, VswitchdError
from ovsndu.model import (
    CATEGORIES,
    Conntrack,
    Entry,
    FdbEntry,
    Flow,
    Group,
    Meter,
    Port,
    Snapshot,
)
from ovsndu.ovs import ofbundle, ofdump, ofmeters, pktout
from ovsndu.ovs.ct_defer import split_for_gap
from ovsndu.ovs.ofbundle import CapturedBundle
from ovsndu.ovs.ofwire import OF10, OF15
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import BridgeInfo, read_bridges, read_ports
from ovsndu.ovs.replay import (
    FdbPlan,
    PacketOut,
    Replayed,
    conntrack_packet_outs,
    fdb_plan,
    with_parents_first,
)
from ovsndu.ovs.uncarried import Uncarried, find_uncarried, refuse_if_any

CT_CHUNK = 10_000
WIRE_XIDS = 0x40000000  # xids of bundle adds built from bytes (ovs-ofctl counts from 1)
WIRE_GROUP_XIDS = 0x30000000  # xids of group-mods carried as bytes
USERSPACE_DATAPATHS = ("netdev", "dummy")


def entries_of(snap: Snapshot, category: str, bridge: str) -> list[Entry]:
    """The entries of one category that belong to *bridge*."""
    return [e for e in snap.categories[category] if getattr(e, "bridge", None) == bridge]


@dataclass
class RestorePlan:
    """Everything a restore will send, computed from the snapshot and the database alone.

    Built before the handover (nothing in it needs the new vswitchd), so the gap only
    pays for sending it.  Per bridge one bundle holds the flow and group replacement and,
    on the bridge chosen for it, the conntrack replay and FDB learning packet-outs.
    """

    snapshot: Snapshot
    bridges: list[BridgeInfo]
    bundles: dict[str, list[str]]
    ct_extra: list[list[str]]          # conntrack packet-outs beyond the first bundle's share
    ct_bridge: str | None
    fdb: FdbPlan
    port_names: dict[tuple[str, str], str]
    has_tcp: bool
    encoded: dict[str, CapturedBundle] = field(default_factory=dict)
    uncarried: tuple[Uncarried, ...] = ()
    # Deferred conntrack replay (ovsndu.ovs.ct_defer): sent after forwarding resumed.
    ct_later: list[Conntrack] = field(default_factory=list)
    ct_later_chunks: list[list[PacketOut]] = field(default_factory=list)
    ct_encoded: dict[int, CapturedBundle] = field(default_factory=dict)  # id(chunk) -> bytes
    meter_msgs: dict[str, list[bytes]] = field(default_factory=dict)  # bridge -> METER_MODs
    # Rules only OpenFlow 1.0 can carry (NXT_FLOW_MOD bytes), sent after the bundle.
    nx_flows: dict[str, list[Flow]] = field(default_factory=dict)


def build_plan(snap: Snapshot, database: str, uncarried_mode: str = "report", *,
               encode: bool = False, defer_window: float | None = None,
               replayed: Replayed | None = None) -> RestorePlan:
    """Check bridges and OpenFlow port numbers, and build every line to send.

    *encode*: also encode each OpenFlow 1.4+ bundle now (ovs-ofctl's parsing, ~20 µs a
    rule), so that applying the plan only sends bytes.  *defer_window*: conntrack
    entries idle at least this long go to ``ct_later`` (:mod:`ovsndu.ovs.ct_defer`),
    replayed by :meth:`Restorer.replay_later` once forwarding resumed (kept as packet-outs,
    encoded by :func:`ovsndu.ovs.pktout.encode`).  *replayed*: the conntrack packet-outs
    an earlier plan made (:func:`ovsndu.ovs.replay.conntrack_packet_outs`).
    """
    with Ovsdb(database) as db:
        bridges = _check_bridges(snap, read_bridges(db))
        _check_ofports(snap, db)
        port_names, access = port_names_of(snap, db)
    userspace = [b for b in bridges if b.datapath_type in USERSPACE_DATAPATHS]
    uncarried = find_uncarried(snap, replay_conntrack=bool(userspace))
    refuse_if_any(uncarried, uncarried_mode)
    skip = {u.entry.canonical() for u in uncarried}  # (none: no entry is encoded for it)
    fdb_entries = [e for e in snap.categories["fdb"] if isinstance(e, FdbEntry)
                   and not (skip and e.canonical() in skip)]
    fdb = fdb_plan(fdb_entries, port_names, access, bond_members(snap))
    ct_all = [e for e in snap.categories["conntrack"] if isinstance(e, Conntrack)
              and not (skip and e.canonical() in skip)]
    ct_first, ct_later = (split_for_gap(ct_all, defer_window) if defer_window is not None
                          and userspace else (ct_all, []))
    ct_first, ct_later = with_parents_first(ct_first, ct_later)
    ct_lines = [p.line() for p in conntrack_packet_outs(ct_first, related_to=ct_all,
                                                        made=replayed)]
    later_outs = conntrack_packet_outs(ct_later, related_to=ct_all, made=replayed)
    ct_bridge = userspace[0].name if userspace and (ct_lines or later_outs) else None
    bundles: dict[str, list[str]] = {}
    # Rules carried as bytes (ovsndu.ovs.ofwire): OpenFlow 1.5 ones join the bundle
    # after the rules encoded from text; OpenFlow 1.0 ones follow it.
    wire: dict[str, list[Flow]] = {}
    nx_flows: dict[str, list[Flow]] = {}
    wire_at: dict[str, int] = {}
    wire_groups: dict[str, list[Group]] = {}
    groups_at: dict[str, int] = {}
    for bridge in bridges:
        name = bridge.name
        groups = [e for e in entries_of(snap, "groups", name) if isinstance(e, Group)]
        flows = [e for e in entries_of(snap, "flows", name) if isinstance(e, Flow)]
        lines = ["flow delete"]
        if bridge.of_version != "OpenFlow10":
            lines.append("group delete group_id=all")
        groups_at[name] = len(lines)
        ordered = _groups_in_order(groups)
        if bridge.of_version == "OpenFlow15" and ordered and all(g.wire for g in ordered):
            wire_groups[name] = ordered   # spliced in as group-mod bytes, in this order
        else:
            lines += [f"group add {g.spec()}" for g in ordered]
        if bridge.of_version == "OpenFlow15":
            by_version = _by_wire_version(flows)
            flows = by_version.get(0, [])
            wire[name], nx_flows[name] = by_version.get(OF15, []), by_version.get(OF10, [])
        lines += [f"flow add {f.spec()}" for f in flows]
        wire_at[name] = len(lines)
        lines += fdb.lines.get(name, ())
        if name == ct_bridge:
            lines += ct_lines[:CT_CHUNK]
        bundles[name] = lines
    extra = [ct_lines[i:i + CT_CHUNK] for i in range(CT_CHUNK, len(ct_lines), CT_CHUNK)]
    later = [later_outs[i:i + CT_CHUNK] for i in range(0, len(later_outs), CT_CHUNK)]
    has_tcp = any(isinstance(e, Conntrack) and e.protocol == "tcp"
                  for e in snap.categories["conntrack"])
    encoded = {}
    for bridge in bridges:
        if (encode or wire.get(bridge.name) or wire_groups.get(bridge.name)) \
                and bridge.of_version in ofbundle.VERSIONS:
            try:
                encoded[bridge.name] = ofbundle.capture(bundles[bridge.name],
                                                        bridge.of_version)
            except VswitchdError as exc:
                raise RestoreError("flows", f"{bridge.name}: {reason_of(exc)}") from None
            carried = wire.get(bridge.name, [])
            ofbundle.splice(encoded[bridge.name], wire_at[bridge.name],
                            ofdump.bundle_adds(carried, encoded[bridge.name].open_msg,
                                               WIRE_XIDS),
                            carried)
            byte_groups = wire_groups.get(bridge.name, [])
            ofbundle.splice(encoded[bridge.name], groups_at[bridge.name],
                            ofdump.bundle_adds(byte_groups, encoded[bridge.name].open_msg,
                                               WIRE_GROUP_XIDS),
                            byte_groups)
    plan = RestorePlan(snap, bridges, bundles, extra, ct_bridge, fdb, port_names, has_tcp,
                       encoded, uncarried, ct_later, later, nx_flows=nx_flows)
    for bridge in bridges if encode else ():
        specs = [e.spec() for e in entries_of(snap, "meters", bridge.name) if isinstance(e, Meter)]
        if specs and bridge.meter_version is not None:
            try:
                plan.meter_msgs[bridge.name] = ofmeters.capture(specs)
            except VswitchdError as exc:
                raise RestoreError("meters", f"{bridge.name}: {reason_of(exc)}") from None
    if encode and ct_bridge is not None:
        version = version_of(plan, ct_bridge)
        try:
            for chunk in extra if version in ofbundle.VERSIONS else ():
                plan.ct_encoded[id(chunk)] = ofbundle.capture(chunk, version)
            for outs in later if version in ofbundle.VERSIONS else ():
                plan.ct_encoded[id(outs)] = pktout.encode(outs, version)
        except VswitchdError as exc:
            raise RestoreError("conntrack", reason_of(exc)) from None
    return plan


def _check_bridges(snap: Snapshot, bridges: list[BridgeInfo]) -> list[BridgeInfo]:
    present = {b.name: b for b in bridges}
    wanted = {getattr(e, "bridge", "") for name in CATEGORIES
              for e in snap.categories[name]} - {""}
    missing = sorted(wanted - present.keys())
    if missing:
        raise RestoreError("ports", f"bridge {missing[0]} does not exist in the target")
    return [present[name] for name in sorted(present)]

def _check_ofports(snap: Snapshot, db: Ovsdb) -> None:
    have = {(p.bridge, p.port, p.interface): p for p in read_ports(db, {})}
    for want in snap.categories["ports"]:
        assert isinstance(want, Port)
        got = have.get((want.bridge, want.port, want.interface))
        where = f"interface {want.interface} of {want.bridge}"
        if got is None:
            raise RestoreError("ports", f"{where} does not exist in the target")
        if got.ofport != want.ofport:
            raise RestoreError("ports", f"{where} has OpenFlow port {got.ofport}, "
                               f"the snapshot {want.ofport}")


def port_names_of(snap: Snapshot, db: Ovsdb
                ) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], int]]:
    """(bridge, OpenFlow port) → interface name (what ``fdb/add`` takes; a bond's port
    name is not one), and → the VLAN its untagged frames are in (access ports, the
    native VLAN of native-tagged/-untagged ports, dot1q-tunnel)."""
    names: dict[tuple[str, str], str] = {}
    port_of: dict[tuple[str, str], str] = {}
    for p in snap.categories["ports"]:
        assert isinstance(p, Port)
        key = "LOCAL" if p.ofport == 65534 else str(p.ofport)
        names[(p.bridge, key)], port_of[(p.bridge, key)] = p.interface, p.port
    modes: tuple[object, ...] = ("access", [], None, "native-tagged", "native-untagged",
                                 "dot1q-tunnel")
    untagged = {r["name"]: r["tag"] for r in db.select("Port", ["name", "tag", "vlan_mode"])
                if isinstance(r["tag"], int) and r["vlan_mode"] in modes}
    return names, {k: untagged[name] for k, name in port_of.items() if name in untagged}


def version_of(plan: RestorePlan, bridge: str) -> str:
    """The OpenFlow version *bridge* of *plan* speaks."""
    return next(b.of_version for b in plan.bridges if b.name == bridge)


def bond_members(snap: Snapshot) -> dict[tuple[str, str], tuple[str, ...]]:
    """(bridge, OpenFlow port) of a bond's member → the OpenFlow ports of all its members."""
    groups: dict[tuple[str, str], list[str]] = {}
    for p in snap.categories["ports"]:
        if isinstance(p, Port) and p.ofport > 0:
            groups.setdefault((p.bridge, p.port), []).append(str(p.ofport))
    return {(bridge, ofport): tuple(ofports) for (bridge, _), ofports in groups.items()
            if len(ofports) > 1 for ofport in ofports}


def _by_wire_version(flows: list[Flow]) -> dict[int, list[Flow]]:
    """Flows by the OpenFlow version of the bytes they carry (0: none, they go as text)."""
    out: dict[int, list[Flow]] = {}
    for f in flows:  # the version is the first byte: the first 4 base64 characters
        out.setdefault(base64.b64decode(f.wire[:4], validate=True)[0] if f.wire else 0,
                       []).append(f)
    return out


def _groups_in_order(groups: list[Group]) -> list[Group]:
    """Groups that chain to other groups go after the ones they name."""
    return sorted(groups, key=lambda g: any("group:" in b for b in g.buckets))


def reason_of(exc: Exception) -> str:
    """An OVS error without the command that met it."""
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text

