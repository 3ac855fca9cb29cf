"""Proof a restore took: read the target back and compare it with the snapshot.

The rule is :func:`ovsndu.model.carried.check_carried` (control plane equal, traffic
state present unless it expired); routes cached from the kernel, entries that cannot
be carried and the OpenFlow state of bridges with controllers are left out as
:func:`verify_readback` explains; the helpers here are shared with the upgrade client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ovsndu.errors import RestoreError
from ovsndu.model import Entry, Route, Snapshot, diff_category
from ovsndu.model.carried import check_carried
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import StateReader, read_bridges
from ovsndu.ovs.restore_plan import USERSPACE_DATAPATHS
from ovsndu.ovs.uncarried import carried_only, find_uncarried
from ovsndu.render import entry_text


def verify_readback(snap: Snapshot, rundir: Path, db: str, *, pid: int | None = None,
                    of_dir: Path | None = None, anomalies: list[str] | None = None,
                    elapsed: float = 0.0,
                    openflow: Mapping[str, Sequence[Entry]] | None = None,
                    ct_detail: bool = True) -> Snapshot:
    """Read the vswitchd of *rundir* back; RestoreError naming the first category that
    lost something.

    The rule is :func:`ovsndu.model.carried.check_carried`: the control plane equal,
    every conntrack and FDB entry present unless it expired within *elapsed* seconds
    (since *snap* was read); entries traffic created since are expected.
    Routes cached from the kernel are re-read by the new process from the kernel,
    which may have changed meanwhile (an IPv6 link-local address finishing DAD):
    only user routes must match; cached differences are reported in *anomalies*.
    Entries that cannot be carried (:mod:`ovsndu.ovs.uncarried`) are left out of
    *snap* first: everything else must match.  *openflow*: the OpenFlow categories read
    back already, after flow-restore-wait was lifted (:meth:`StateReader.openflow_known`
    with *snap*'s rules known), the rest is read now.
    *ct_detail* False: conntrack is read back without its TCP details and timeouts (the
    rule compares what traffic cannot change, reply tuple and NAT, by identity; the
    returned snapshot's conntrack entries then lack them).
    """
    with Ovsdb(db) as conn:
        userspace = any(b.datapath_type in USERSPACE_DATAPATHS for b in read_bridges(conn))
        aging = mac_aging_times(conn)
        controlled = [] if conn.flow_restore_wait()[0] else controlled_bridges(conn)
    snap = carried_only(snap, find_uncarried(snap, replay_conntrack=userspace))
    after = StateReader(rundir, db, pid=pid, of_dir=of_dir, known=snap,
                        ct_detail=ct_detail).snapshot(openflow=openflow)
    if after.digest("routes") != snap.digest("routes") and anomalies is not None:
        anomalies.append("routes cached from the kernel changed: "
                         + describe_difference("routes", snap, after))
    want, got = user_routes_only(snap), user_routes_only(after)
    if controlled:
        # Their controllers (Controller table) connect once flow-restore-wait is lifted
        # and may rightly have written already: their OpenFlow state is theirs.
        want, got = without_bridges(want, controlled), without_bridges(got, controlled)
        if anomalies is not None:
            anomalies.append("OpenFlow state of " + ", ".join(controlled) + " read back "
                             "before flow-restore-wait was lifted only: its "
                             "Controller-table controllers may write to it since")
    lost = check_carried(want, got, elapsed=elapsed, mac_aging=aging)
    if lost:
        raise RestoreError(lost[0].category, "read-back lost state: "
                           + lost[0].describe(entry_text))
    return after


def mac_aging_times(db: Ovsdb) -> dict[str, int]:
    """bridge → ``other_config:mac-aging-time`` (seconds; OVS's default 300)."""
    out = {}
    for row in db.select("Bridge", ["name", "other_config"]):
        with contextlib.suppress(ValueError):
            out[row["name"]] = int(row["other_config"].get("mac-aging-time", 300))
    return out


OPENFLOW = ("flows", "groups", "meters", "tlv_mappings")


def controlled_bridges(db: Ovsdb) -> list[str]:
    """Bridges with a row in the ``Controller`` table (connected once forwarding starts)."""
    return sorted(r["name"] for r in db.select("Bridge", ["name", "controller"])
                  if r["controller"])


def without_bridges(snap: Snapshot, bridges: Iterable[str]) -> Snapshot:
    """*snap* without the OpenFlow state of *bridges*."""
    names = set(bridges)
    for category in OPENFLOW:
        snap = snap.replace(category, [e for e in snap.categories[category]
                                       if getattr(e, "bridge", None) not in names])
    return snap



def user_routes_only(snap: Snapshot) -> Snapshot:
    """*snap* without the routes cached from the kernel."""
    return snap.replace("routes", [r for r in snap.categories["routes"]
                                   if isinstance(r, Route) and r.kind == "user"])



def describe_difference(category: str, want: Snapshot, got: Snapshot, limit: int = 3) -> str:
    """A one-line account of the first differing entries of one category."""
    d = diff_category(category, want.categories[category], got.categories[category],
                      digests=(want.digest(category), got.digest(category)))
    parts = [f"{len(d.removed)} missing, {len(d.added)} extra, {len(d.changed)} changed"]
    parts += [f"missing {entry_text(e)}" for e in d.removed[:limit]]
    parts += [f"extra {entry_text(e)}" for e in d.added[:limit]]
    parts += [f"changed {entry_text(a)} -> {entry_text(b)}" for a, b in d.changed[:limit]]
    return "; ".join(parts)

