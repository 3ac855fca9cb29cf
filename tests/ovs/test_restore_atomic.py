"""A failed ``ovsndu restore`` changes nothing (issue 10, defect 7), judged by OVS's own tools.

The target already holds state (the sample: TLV maps, meters 1 and 2, a flow using
``meter:1``, groups).  Each test restores something that must fail — a hostile
snapshot file, a rule the switch rejects after the meters were replaced, a rule that
installs but reads back different — and compares the raw ``ovs-ofctl`` dumps of the
target before and after.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ovsndu.errors import RestoreError
from ovsndu.model import Flow, Meter, Snapshot
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.restore import restore_snapshot
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.state_corpus import raw_ofctl
from tests.conftest import require_ovs


@pytest.fixture(name="source", scope="module")
def _source(populated: Sandbox) -> Snapshot:
    return read_snapshot(populated.rundir, populated.db)


@pytest.fixture(name="target")
def _target(populated: Sandbox, source: Snapshot, tmp_path: Path) -> Iterator[Sandbox]:
    """A vswitchd on a copy of the database, holding the sample state already."""
    require_ovs()
    db = populated.copy_db(tmp_path / "conf.db")
    with Sandbox(tmp_path / "run", db_file=db) as sb:
        sb.appctl("netdev-dummy/ip4addr", "br0", "192.168.1.1/24")
        restore_snapshot(source, sb.rundir, sb.db)
        yield sb


def _raw(sb: Sandbox) -> dict[str, str]:
    """What OVS's tools show of the OpenFlow state (flows without counters)."""
    out = {}
    for bridge in ("br0", "br1"):
        version = "OpenFlow15" if bridge == "br0" else "OpenFlow13"
        out[f"{bridge} flows"] = "\n".join(sorted(raw_ofctl(
            sb, bridge, "dump-flows", version=version, options=("--no-stats",)).splitlines()))
        out[f"{bridge} meters"] = raw_ofctl(sb, bridge, "dump-meters", version="OpenFlow13")
        out[f"{bridge} groups"] = raw_ofctl(sb, bridge, "dump-groups", version=version)
        out[f"{bridge} tlv"] = raw_ofctl(sb, bridge, "dump-tlv-map", version=version)
    return out


def _restore_cli(path: Path, sb: Sandbox) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ovsndu", "restore", str(path), "--rundir",
                           str(sb.rundir)], capture_output=True, text=True, check=False)


def _edited(source: Snapshot, category: str, index: int, **change: Any) -> dict[str, Any]:
    data = source.to_dict()
    entry = data["categories"][category]["entries"][index]
    entry.update(change)
    for body in data["categories"].values():
        body.pop("digest"), body.pop("count")
    return data


HOSTILE = [
    ("flows", {"priority": 2**80}),
    ("flows", {"match": "ip\nflow delete"}),
    ("flows", {"match": "ip actions=output:2,controller"}),
    ("flows", {"actions": "drop\nflow add priority=1 actions=controller"}),
    ("flows", {"table": 255}),
    ("meters", {"meter_id": 2**40}),
    ("tlv_mappings", {"length": 128}),
    ("conntrack", {"zone": 70000}),
    ("conntrack", {"orig": "src=10.0.0.1,dst=10.0.0.2 actions=x"}),
    ("fdb", {"vlan": 4096}),
    ("groups", {"type": "select\ngroup delete"}),
]


@pytest.mark.parametrize(("category", "change"), HOSTILE,
                         ids=[f"{c}-{next(iter(v))}" for c, v in HOSTILE])
def test_hostile_snapshot_is_refused_before_any_change(
        category: str, change: dict[str, Any], source: Snapshot, target: Sandbox,
        tmp_path: Path) -> None:
    """Exit 2 with one line naming the field; OVS's dumps of the target are unchanged."""
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(_edited(source, category, 0, **change)))
    before = _raw(target)
    r = _restore_cli(path, target)
    assert r.returncode == 2, r.stdout
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"field {next(iter(change))!r}" in r.stderr
    assert _raw(target) == before


def test_rejected_rule_after_meters_were_replaced(source: Snapshot, target: Sandbox) -> None:
    """Other meters, another TLV map and a flow the switch rejects (meter:77): the restore
    fails, and the target keeps its meters 1 and 2, the flow using meter:1, its TLV map."""
    meters = [Meter(bridge="br0", meter_id=3, flags=("kbps",), bands=("type=drop rate=10",))]
    bad = Flow(bridge="br0", table=0, cookie="0x0", priority=9, match="udp",
               actions="meter:77,output:1")
    snap = (source.replace("meters", meters)
            .replace("flows", [*source.categories["flows"], bad])
            .replace("tlv_mappings", []))
    before = _raw(target)
    assert "meter=1" in before["br0 meters"] and "meter:1" in before["br0 flows"]
    with pytest.raises(RestoreError, match="put back as found"):
        restore_snapshot(snap, target.rundir, target.db)
    assert _raw(target) == before


def test_readback_mismatch_undoes_the_install(source: Snapshot, target: Sandbox) -> None:
    """A rule that installs but reads back different (OVS prints /32 without the mask):
    the read-back fails and the install is undone."""
    odd = Flow(bridge="br0", table=3, cookie="0x0", priority=5, match="ip,nw_src=10.0.0.1/32",
               actions="drop")
    snap = source.replace("flows", [*source.categories["flows"], odd]).replace("meters", [])
    snap = snap.replace("flows", [f for f in snap.categories["flows"]
                                  if "meter" not in f.actions])  # type: ignore[attr-defined]
    before = _raw(target)
    with pytest.raises(RestoreError, match=r"flows.*read-back.*put back as found"):
        restore_snapshot(snap, target.rundir, target.db)
    assert _raw(target) == before
