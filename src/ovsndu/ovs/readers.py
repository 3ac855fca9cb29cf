"""Read a running vswitchd's whole state into a :class:`Snapshot`.

Sources, all standard interfaces: OVSDB (bridges, ports, interfaces, OpenFlow
port numbers), unixctl (version, datapath ports, FDB, tunnel neighbours, routes,
conntrack) and OpenFlow through ``ovs-ofctl`` (flows, groups, meters, TLV map),
with the OpenFlow version chosen per bridge from its ``protocols`` column.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovsndu.errors import VswitchdError
from ovsndu.model import CATEGORIES, Entry, Flow, Port, Snapshot, VswitchdInfo
from ovsndu.ovs import appctl_parsers, ofdump, parsers
from ovsndu.ovs.ct_read import counted, read_conntrack, zones_named
from ovsndu.ovs.ofctl import best_version, ofctl
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.unixctl import Unixctl

DEFAULT_RUNDIR = "/var/run/openvswitch"


def default_rundir() -> str:
    """``$OVS_RUNDIR``, else ``/var/run/openvswitch``."""
    return os.environ.get("OVS_RUNDIR") or DEFAULT_RUNDIR


@dataclass(frozen=True, slots=True)
class BridgeInfo:
    """What the readers need to know of one bridge."""

    name: str
    datapath_type: str
    protocols: tuple[str, ...]

    @property
    def of_version(self) -> str:
        """The OpenFlow version flows and groups are read and written with."""
        version = best_version(list(self.protocols))
        if version is None:
            raise VswitchdError(f"bridge {self.name} allows no OpenFlow version")
        return version

    @property
    def meter_version(self) -> str | None:
        """The version for meters (1.3+), None when the bridge allows none."""
        return best_version(list(self.protocols), at_least="OpenFlow13")


def read_bridges(db: Ovsdb) -> list[BridgeInfo]:
    """Every bridge in the database, by name."""
    rows = db.select("Bridge", ["name", "datapath_type", "protocols"])
    return sorted(
        (BridgeInfo(r["name"], r["datapath_type"] or "system", tuple(_as_list(r["protocols"])))
         for r in rows),
        key=lambda b: b.name,
    )


def read_ports(db: Ovsdb, dp_ports: dict[tuple[str, str], int]) -> list[Port]:
    """Ports from OVSDB, datapath port numbers from ``dpif/show``."""
    bridges = db.select("Bridge", ["name", "ports"])
    ports = {r["_uuid"]: r for r in db.select("Port", ["name", "interfaces"])}
    ifaces = {r["_uuid"]: r for r in db.select("Interface", ["name", "type", "ofport",
                                                             "mac_in_use"])}
    mirror_outputs = {uuid for m in db.select("Mirror", ["output_port"])
                      for uuid in _as_list(m["output_port"])}
    out = []
    for bridge in bridges:
        for port_uuid in _as_list(bridge["ports"]):
            port = ports[port_uuid]
            for iface_uuid in _as_list(port["interfaces"]):
                iface = ifaces[iface_uuid]
                ofport = iface["ofport"]
                out.append(Port(
                    bridge=bridge["name"], port=port["name"], interface=iface["name"],
                    type=iface["type"] or "system",
                    ofport=ofport if isinstance(ofport, int) else -1,
                    dp_port=dp_ports.get((bridge["name"], iface["name"])),
                    mac=iface["mac_in_use"] if isinstance(iface["mac_in_use"], str) else None,
                    mirror_output=port_uuid in mirror_outputs,
                ))
    return out


def _as_list(value: Any) -> list[Any]:
    """OVSDB sets of one element arrive bare; normalise to a list."""
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


class StateReader:
    """Reads one vswitchd (found through ``<rundir>/ovs-vswitchd.pid``) and its database."""

    def __init__(self, rundir: str | Path | None = None, db: str | None = None,
                 *, pid: int | None = None, of_dir: str | Path | None = None,
                 known: Snapshot | None = None, ct_detail: bool = True):
        self.rundir = Path(rundir or default_rundir())
        # False: conntrack without its TCP details and timeouts (a read that checks
        # presence: each zone's hold of forwarding is ~40 % shorter, ovs/ct_read.py)
        self.ct_detail = ct_detail
        # The rules an earlier read found, by bridge: a bridge whose rules the switch
        # describes byte for byte as these gives these (ofdump.read_flows).
        self.known: dict[str, list[Flow]] | None = None
        self._known = known
        self._known_hits: set[str] = set()  # bridges whose rules were the known ones
        self._flow_bridges: set[str] = set()  # bridges whose rules were read
        if known is not None:
            self.known = {}
            for f in known.categories["flows"]:
                if isinstance(f, Flow):
                    self.known.setdefault(f.bridge, []).append(f)
        self.db = db or f"unix:{self.rundir / 'db.sock'}"
        self.pid = pid
        self.of_dir = Path(of_dir) if of_dir is not None else self.rundir  # OpenFlow sockets
        self.traffic_read_s = 0.0  # how long the last read of conntrack and FDB took
        self.bridges: list[BridgeInfo] = []  # as the last snapshot read them

    def snapshot(self, *, traffic: bool | Mapping[str, Sequence[Entry]] = True,
                 openflow: Mapping[str, Sequence[Entry]] | None = None) -> Snapshot:
        """Read all nine categories (conntrack and FDB left empty unless *traffic*: the
        final catch-up reads them last, with :meth:`traffic`; a mapping: those categories
        as already read, e.g. by an earlier :meth:`traffic`; *openflow*: the OpenFlow
        categories as already read by :meth:`openflow_known` with the same known rules)."""
        with Unixctl.for_daemon(self.rundir, pid=self.pid) as appctl, Ovsdb(self.db) as db:
            version = appctl("version").splitlines()[0].strip()
            bridges = self.bridges = read_bridges(db)
            cats: dict[str, list[Entry]] = {name: [] for name in CATEGORIES}
            self._known_hits.clear()
            self._flow_bridges.clear()
            # OpenFlow dumps fork ovs-ofctl; run them while unixctl reads go on here.
            with ThreadPoolExecutor(max_workers=4) as pool:
                futures = [pool.submit(job) for job in self._openflow_jobs(bridges)
                           if openflow is None]
                cats["ports"] = list(read_ports(db, appctl_parsers.parse_dpif_ports(
                    appctl("dpif/show"))))
                cats["tunnel_neighbors"] = list(appctl_parsers.parse_tnl_neigh(
                    appctl("tnl/neigh/show")))
                cats["routes"] = list(appctl_parsers.parse_routes(appctl("ovs/route/show")))
                for future in futures:
                    category, entries = future.result()
                    cats[category].extend(entries)
                if self.known is not None and self._known is not None and \
                        self._known_hits == self._flow_bridges >= self.known.keys():
                    # Every bridge's rules are the known ones: the very same entries.
                    cats["flows"] = self._known.categories["flows"]  # type: ignore[assignment]
                if openflow is not None:  # (the known rules' own tuple kept as it is)
                    cats.update(openflow)  # type: ignore[arg-type]
                if isinstance(traffic, Mapping):
                    cats.update({k: list(v) for k, v in traffic.items()})
                elif traffic:  # after the flows: the zones they name are read one by one
                    began = time.monotonic()
                    cats.update(_read_traffic(appctl, bridges, zones_named(cats["flows"]),
                                              detail=self.ct_detail))
                    self.traffic_read_s = time.monotonic() - began
            return Snapshot.build(VswitchdInfo(pid=appctl.pid, version=version), cats,
                                  known=self._known)

    def traffic(self, zones: Collection[int] = ()) -> dict[str, list[Entry]]:
        """Only the traffic categories (conntrack, FDB); *zones*: conntrack zones to read
        one by one besides those known (:func:`ovsndu.ovs.ct_read.read_conntrack`)."""
        with Unixctl.for_daemon(self.rundir, pid=self.pid) as appctl, Ovsdb(self.db) as db:
            began = time.monotonic()
            out = _read_traffic(appctl, read_bridges(db), zones, detail=self.ct_detail)
            self.traffic_read_s = time.monotonic() - began
            return out

    def openflow(self, only: Collection[str] | None = None) -> dict[str, list[Entry]]:
        """Only the OpenFlow categories (flows, groups, meters, TLV map), dumped in parallel;
        of the bridges named *only*, if given."""
        with Ovsdb(self.db) as db:
            bridges = [b for b in read_bridges(db) if only is None or b.name in only]
        cats: dict[str, list[Entry]] = {c: [] for c in ("flows", "groups", "meters",
                                                          "tlv_mappings")}
        with ThreadPoolExecutor(max_workers=4) as pool:
            for category, entries in pool.map(lambda job: job(),
                                              self._openflow_jobs(bridges)):
                cats[category].extend(entries)
        return cats

    def openflow_known(self) -> dict[str, Sequence[Entry]]:
        """:meth:`openflow` of every bridge, for :meth:`snapshot`'s *openflow*: when every
        bridge's rules are the known ones, the known snapshot's own tuple of them (its
        order and digest are kept, not sorted again)."""
        self._known_hits.clear()
        self._flow_bridges.clear()
        cats: dict[str, Sequence[Entry]] = dict(self.openflow())
        if self.known is not None and self._known is not None and \
                self._known_hits == self._flow_bridges >= self.known.keys():
            cats["flows"] = self._known.categories["flows"]
        return cats

    def _openflow_jobs(self, bridges: list[BridgeInfo]
                       ) -> list[Callable[[], tuple[str, list[Entry]]]]:
        rundir = self.of_dir
        jobs: list[Callable[[], tuple[str, list[Entry]]]] = []
        for b in bridges:
            def flows(b: BridgeInfo = b) -> tuple[str, list[Entry]]:
                known = None if self.known is None else self.known.get(b.name, [])
                found: list[Entry] = list(_counted(
                    lambda: read_flows(rundir, b, known),
                    lambda: parsers.parse_aggregate_count(ofctl(
                        rundir, b.name, b.of_version, "dump-aggregate")),
                    f"flows of {b.name}", "dump-aggregate"))
                self._flow_bridges.add(b.name)
                if known is not None and len(found) == len(known) and all(
                        x is y for x, y in zip(found, known, strict=True)):
                    self._known_hits.add(b.name)
                return "flows", found

            def groups(b: BridgeInfo = b) -> tuple[str, list[Entry]]:
                if b.of_version == "OpenFlow10":
                    return "groups", []
                if b.of_version == "OpenFlow15":
                    return "groups", list(ofdump.read_groups(rundir / f"{b.name}.mgmt",
                                                             b.name))
                text = ofctl(rundir, b.name, b.of_version, "dump-groups", extra=("--no-names",))
                return "groups", list(parsers.parse_groups(b.name, text))

            def meters(b: BridgeInfo = b) -> tuple[str, list[Entry]]:
                if b.meter_version is None:
                    return "meters", []
                text = ofctl(rundir, b.name, "OpenFlow13", "dump-meters")
                found = parsers.parse_meters(b.name, text)
                if found:
                    parsers.check_meters(b.name, found, parsers.parse_meter_features(
                        ofctl(rundir, b.name, "OpenFlow13", "meter-features")))
                return "meters", list(found)

            def tlv(b: BridgeInfo = b) -> tuple[str, list[Entry]]:
                text = ofctl(rundir, b.name, b.of_version, "dump-tlv-map")
                return "tlv_mappings", list(parsers.parse_tlv_map(b.name, text))

            jobs += [flows, groups, meters, tlv]
        return jobs


def read_flows(rundir: Path, bridge: BridgeInfo, known: Sequence[Flow] | None = None
               ) -> list[Flow]:
    """A bridge's rules: with their flow-mod bytes over OpenFlow 1.5 (:mod:`ovsndu.ovs.ofdump`;
    *known*: the rules expected, see there), as text alone over older versions."""
    if bridge.of_version == "OpenFlow15":
        return ofdump.read_flows(rundir / f"{bridge.name}.mgmt", bridge.name, known)
    return parsers.parse_flows(bridge.name, ofctl(rundir, bridge.name, bridge.of_version,
                                                  "dump-flows", extra=("--no-names",)))


def _read_traffic(appctl: Unixctl, bridges: list[BridgeInfo], zones: Collection[int] = (),
                  *, detail: bool = True) -> dict[str, list[Entry]]:
    # Conntrack first, FDB last: the final catch-up freezes conntrack (ovs/ct_freeze.py)
    # but not MAC learning, so the FDB read is the one to end right before the stop.
    conntrack: list[Entry] = []
    for dp in appctl("dpctl/dump-dps").split():
        conntrack.extend(read_conntrack(appctl, dp, zones, detail=detail))
    fdb: list[Entry] = []
    for bridge in bridges:
        fdb.extend(appctl_parsers.parse_fdb(bridge.name, appctl("fdb/show", bridge.name)))
    return {"fdb": fdb, "conntrack": conntrack}


_counted = counted


def read_snapshot(rundir: str | Path | None = None, db: str | None = None,
                  *, pid: int | None = None, known: Snapshot | None = None) -> Snapshot:
    """Convenience: ``StateReader(rundir, db, pid=pid, known=known).snapshot()``."""
    return StateReader(rundir, db, pid=pid, known=known).snapshot()
