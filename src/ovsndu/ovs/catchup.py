"""Apply the final catch-up (:mod:`ovsndu.model.delta`) to the new vswitchd.

Runs in the client right after the prepared install, while flow-restore-wait still
holds the new process and before any controller can reach it.  Per bridge: TLV
mappings and meters that appeared or changed first (flows may use them); then one
bundle — flows removed, groups removed, groups added or changed, flows added or
changed, conntrack replay and FDB learning packet-outs for the entries that appeared;
then meters and TLV mappings that went away.
"""

from __future__ import annotations

import contextlib
import time

from ovsndu.errors import RestoreError, VswitchdError
from ovsndu.model import Conntrack, FdbEntry, Flow, Group, Meter, Snapshot, TlvMapping
from ovsndu.model.delta import Delta
from ovsndu.ovs import ofbundle, ofdump, ofmeters, ofwire
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import read_bridges
from ovsndu.ovs.replay import conntrack_lines, fdb_plan
from ovsndu.ovs.restore import Restorer
from ovsndu.ovs.restore_plan import USERSPACE_DATAPATHS, port_names_of
from ovsndu.ovs.uncarried import carriable
from ovsndu.ovs.unixctl import Unixctl

#: The delta's file in the upgrade's work directory (0700, beside the token).
CATCHUP_FILE = "catchup.json"


def _flow_key(f: Flow) -> str:
    return ",".join(p for p in (f"table={f.table}", f"priority={f.priority}", f.match) if p)


def bundle_lines(delta: Delta, bridge: str, *, groups: bool = True) -> list[str]:
    """The flow and group lines of one bridge's catch-up bundle (pure)."""
    lines = [f"flow delete_strict {_flow_key(f)}"
             for f in delta.of_bridge("removed", "flows", bridge) if isinstance(f, Flow)]
    if groups:
        lines += [f"group delete group_id={g.group_id}"
                  for g in delta.of_bridge("removed", "groups", bridge) if isinstance(g, Group)]
        lines += [f"group add {g.spec()}" for g in _added_groups(delta, bridge) if not g.wire]
        lines += [f"group mod {g.spec()}"
                  for g in delta.of_bridge("changed", "groups", bridge) if isinstance(g, Group)]
    lines += [f"flow add {f.spec()}"
              for f in _added_flows(delta, bridge) if not f.wire]
    return lines


def _added_flows(delta: Delta, bridge: str) -> list[Flow]:
    return [f for kind in ("added", "changed")
            for f in delta.of_bridge(kind, "flows", bridge) if isinstance(f, Flow)]


def _added_groups(delta: Delta, bridge: str) -> list[Group]:
    return [g for g in delta.of_bridge("added", "groups", bridge) if isinstance(g, Group)]


def _wire15(flow: Flow) -> bool:
    return bool(flow.wire) and ofdump.message(flow)[0] == ofwire.OF15


def _send_wire_flows(restorer: Restorer, delta: Delta, bridge: str) -> None:
    """Groups and rules that carry bytes (ovsndu.ovs.ofwire) go as bytes, after the text
    bundle: one bundle, new groups before the rules that may use them."""
    flows = _added_flows(delta, bridge)
    by_bytes: list[Flow | Group] = [g for g in _added_groups(delta, bridge) if g.wire]
    by_bytes += [f for f in flows if _wire15(f)]
    if by_bytes:
        adds = [ofwire.with_xid(ofdump.message(e), 0x40000000 + i)
                for i, e in enumerate(by_bytes)]
        lines = [f"{'group' if isinstance(e, Group) else 'flow'} add {e.spec()}"
                 for e in by_bytes]
        ofbundle.replay(restorer.of_dir / f"{bridge}.mgmt", ofbundle.from_adds(adds, lines))
    ofdump.send_unbundled(restorer.of_dir / f"{bridge}.mgmt",
                          [f for f in flows if f.wire and not _wire15(f)])


def apply_catchup(restorer: Restorer, delta: Delta, final: Snapshot) -> dict[str, float]:
    """Send *delta* to the vswitchd of *restorer*; *final* is the read it came from (for
    port names).  Returns seconds per step; RestoreError naming what was refused."""
    if delta.empty:
        return {}
    steps: dict[str, float] = {}
    started = time.monotonic()
    with Ovsdb(restorer.db) as db:
        bridges = read_bridges(db)
        port_names, access = port_names_of(final, db)
    # What cannot be carried (ovs/uncarried.py) is left out; the supervisor names it.
    fdb_new = [e for e in carriable(final, "fdb", delta.added.get("fdb", ()))[0]
               if isinstance(e, FdbEntry)]
    fdb = fdb_plan(fdb_new, port_names, access)
    userspace = [b.name for b in bridges if b.datapath_type in USERSPACE_DATAPATHS]
    ct_new = [e for e in (carriable(final, "conntrack", delta.added.get("conntrack", ()))[0]
                          if userspace else delta.added.get("conntrack", ()))
              if isinstance(e, Conntrack)]
    ct_bridge = userspace[0] if userspace and ct_new else None
    ct_lines = conntrack_lines(ct_new) if ct_bridge else []
    steps["catchup_prepare"] = time.monotonic() - started
    with Unixctl.for_daemon(restorer.rundir, pid=restorer.pid) as appctl:
        if not restorer.tcp_seq_check and any(e.protocol == "tcp" for e in ct_new):
            for dp in appctl("dpctl/dump-dps").split():  # as the main install does
                appctl("dpctl/ct-disable-tcp-seq-chk", dp)
        for e in fdb_new:
            if e.static:
                appctl("fdb/add", e.bridge, port_names[(e.bridge, e.port)], str(e.vlan), e.mac)
        for br, port, vlan, mac in fdb.decoys:
            appctl("fdb/add", br, port, str(vlan), mac)
        steps["catchup_fdb"] = time.monotonic() - started - steps["catchup_prepare"]
        try:
            for b in bridges:
                _tlv_and_meters(restorer, delta, b.name, b.of_version, "add")
                lines = bundle_lines(delta, b.name, groups=b.of_version != "OpenFlow10")
                lines += fdb.lines.get(b.name, ())
                if b.name == ct_bridge:
                    lines += ct_lines
                if lines:
                    sent = time.monotonic()
                    try:
                        restorer._bundle(b.name, b.of_version, lines)
                    except VswitchdError as exc:
                        raise RestoreError("flows", f"{b.name} refused the catch-up bundle "
                                           f"({len(lines)} lines): {exc}") from None
                    steps["catchup_bundle"] = (steps.get("catchup_bundle", 0.0)
                                               + time.monotonic() - sent)
                if b.of_version == "OpenFlow15":
                    sent = time.monotonic()
                    try:
                        _send_wire_flows(restorer, delta, b.name)
                    except VswitchdError as exc:
                        raise RestoreError("flows", f"{b.name} refused a caught-up rule: "
                                           f"{exc}") from None
                    steps["catchup_wire"] = (steps.get("catchup_wire", 0.0)
                                             + time.monotonic() - sent)
                _tlv_and_meters(restorer, delta, b.name, b.of_version, "remove")
        finally:
            undone = time.monotonic()
            for br, _port, vlan, mac in fdb.decoys:
                with contextlib.suppress(VswitchdError):
                    appctl("fdb/del", br, str(vlan), mac)
            steps["catchup_fdb"] += time.monotonic() - undone
    steps["catchup"] = time.monotonic() - started
    return steps


def _tlv_and_meters(restorer: Restorer, delta: Delta, bridge: str, version: str,
                    phase: str) -> None:
    try:
        if phase == "add":
            tlvs = [t for t in delta.of_bridge("added", "tlv_mappings", bridge)
                    if isinstance(t, TlvMapping)]
            if tlvs:
                restorer._ofctl(bridge, version, "add-tlv-map", ",".join(t.spec() for t in tlvs))
            # As bytes on one connection where ovsndu encodes them (one ovs-ofctl per
            # meter cost ~4 ms each inside the gap), else by ovs-ofctl.
            msgs: list[bytes] = []
            specs: list[str] = []
            for command, kind in ((0, "added"), (1, "changed")):
                for m in delta.of_bridge(kind, "meters", bridge):
                    assert isinstance(m, Meter)
                    msg = ofmeters.encode(m, command, 0x20000000 + len(msgs))
                    if msg is not None:
                        msgs.append(msg)
                        specs.append(m.spec())
                    else:
                        restorer._ofctl(bridge, "OpenFlow13",
                                        "add-meter" if command == 0 else "mod-meter", m.spec())
            ofmeters.send(restorer.of_dir / f"{bridge}.mgmt", msgs, specs)
        else:
            for m in delta.of_bridge("removed", "meters", bridge):
                assert isinstance(m, Meter)
                restorer._ofctl(bridge, "OpenFlow13", "del-meter", f"meter={m.meter_id}")
            tlvs = [t for t in delta.of_bridge("removed", "tlv_mappings", bridge)
                    if isinstance(t, TlvMapping)]
            if tlvs:
                restorer._ofctl(bridge, version, "del-tlv-map", ",".join(t.spec() for t in tlvs))
    except VswitchdError as exc:
        raise RestoreError("meters", f"{bridge} refused the catch-up: {exc}") from None
