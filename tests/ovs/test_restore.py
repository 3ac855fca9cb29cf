"""Restore: a snapshot of sandbox A installed into a fresh vswitchd B on a copy of A's database."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.errors import RestoreError
from ovsndu.model import CATEGORIES, Flow, Meter, Port, Snapshot
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.restore import restore_snapshot
from ovsndu.ovs.sandbox import Sandbox
from tests.conftest import require_ovs


@pytest.fixture(name="source", scope="module")
def _source(populated: Sandbox) -> Snapshot:
    return read_snapshot(populated.rundir, populated.db)


@pytest.fixture(name="target")
def _target(populated: Sandbox, tmp_path: Path) -> Iterator[Sandbox]:
    """A fresh vswitchd on a copy of the populated sandbox's database."""
    require_ovs()
    db = populated.copy_db(tmp_path / "conf.db")
    with Sandbox(tmp_path / "run", db_file=db) as sb:
        # The address br0 has on a real host lives in the kernel, not in OVS state.
        sb.appctl("netdev-dummy/ip4addr", "br0", "192.168.1.1/24")
        yield sb


def _tx_packets(sb: Sandbox, bridge: str) -> list[int]:
    text = sb.ofctl(bridge, "dump-ports", version="OpenFlow13")
    return [int(n) for n in re.findall(r"tx pkts=(\d+)", text)]


def _diff(a: Snapshot, b: Snapshot) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as tmp:
        pa, pb = Path(tmp, "a.json"), Path(tmp, "b.json")
        pa.write_text(json.dumps(a.to_dict()))
        pb.write_text(json.dumps(b.to_dict()))
        return subprocess.run([sys.executable, "-m", "ovsndu", "diff", str(pa), str(pb)],
                              capture_output=True, text=True, check=False)


# What a category's entries refer to and so must come along (flows name TLV fields,
# meters and groups).
NEEDS = {"flows": ("tlv_mappings", "meters", "groups")}


@pytest.mark.parametrize("category", [c for c in CATEGORIES if c != "ports"])
def test_each_category(category: str, source: Snapshot, target: Sandbox) -> None:
    """One category from A into B (the rest as B has it): ovsndu diff finds no difference."""
    assert source.categories[category], "the sample state must populate this category"
    before = read_snapshot(target.rundir, target.db)
    assert before.digest(category) != source.digest(category)
    wanted = before
    for name in (category, *NEEDS.get(category, ())):
        wanted = wanted.replace(name, source.categories[name])
    tx_before = _tx_packets(target, "br0")
    restore_snapshot(wanted, target.rundir, target.db)
    after = read_snapshot(target.rundir, target.db)
    result = _diff(wanted, after)
    assert result.returncode == 0, result.stdout
    assert after.digest(category) == source.digest(category)
    assert _tx_packets(target, "br0") == tx_before, "the restore transmitted frames"


def test_all_categories_at_once(source: Snapshot, target: Sandbox, tmp_path: Path) -> None:
    """ovsndu restore FILE installs everything; diff of A and B finds no difference."""
    path = tmp_path / "a.json"
    path.write_text(json.dumps(source.to_dict()))
    tx_before = {b: _tx_packets(target, b) for b in ("br0", "br1")}
    r = subprocess.run([sys.executable, "-m", "ovsndu", "restore", str(path), "--rundir",
                        str(target.rundir)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    after = read_snapshot(target.rundir, target.db)
    assert _diff(source, after).returncode == 0
    assert {b: _tx_packets(target, b) for b in ("br0", "br1")} == tx_before
    fdb = [e for e in after.categories["fdb"] if not e.static]  # type: ignore[attr-defined]
    assert fdb, "dynamic entries come back dynamic (with an age), not static"
    assert all(e.age is not None for e in fdb)  # type: ignore[attr-defined]


def test_restore_twice_is_idempotent(source: Snapshot, target: Sandbox) -> None:
    """Restoring the same snapshot again leaves the same state."""
    restore_snapshot(source, target.rundir, target.db)
    restore_snapshot(source, target.rundir, target.db)
    assert read_snapshot(target.rundir, target.db).digests() == source.digests()


class TestRefusals:
    """Bad state stops with an error naming the entry, and no bridge is half-applied."""

    def _unchanged(self, before: Snapshot, sb: Sandbox) -> None:
        after = read_snapshot(sb.rundir, sb.db)
        for name in ("flows", "groups", "meters", "tlv_mappings"):
            assert after.digest(name) == before.digest(name), name

    def test_rejected_flow(self, source: Snapshot, target: Sandbox) -> None:
        """A flow naming a meter that does not exist: the bundle is refused, nothing lands."""
        bad = Flow(bridge="br0", table=0, cookie="0x0", priority=9, match="udp",
                   actions="meter:77,output:1")
        snap = source.replace("flows", [*source.categories["flows"], bad])
        before = read_snapshot(target.rundir, target.db)
        with pytest.raises(RestoreError, match=r"flows.*br0.*meter:77"):
            restore_snapshot(snap, target.rundir, target.db)
        self._unchanged(before, target)

    def test_missing_port(self, source: Snapshot, target: Sandbox) -> None:
        """A port the target lacks: refused before anything is installed."""
        ghost = Port(bridge="br0", port="p9", interface="p9", type="dummy", ofport=9)
        snap = source.replace("ports", [*source.categories["ports"], ghost])
        before = read_snapshot(target.rundir, target.db)
        with pytest.raises(RestoreError, match="interface p9 of br0 does not exist"):
            restore_snapshot(snap, target.rundir, target.db)
        self._unchanged(before, target)

    def test_wrong_ofport(self, source: Snapshot, target: Sandbox) -> None:
        """An interface with another OpenFlow number: refused (flows name ports by number)."""
        ports = [Port(bridge=p.bridge, port=p.port, interface=p.interface, type=p.type,  # type: ignore[attr-defined]
                      ofport=7 if p.port == "p1" else p.ofport, mac=p.mac)  # type: ignore[attr-defined]
                 for p in source.categories["ports"]]
        with pytest.raises(RestoreError, match="p1 of br0 has OpenFlow port 1, the snapshot 7"):
            restore_snapshot(source.replace("ports", ports), target.rundir, target.db)

    def test_unsupported_meter(self, source: Snapshot, target: Sandbox) -> None:
        """A dscp_remark band (the userspace datapath supports drop only): error names it."""
        bad = Meter(bridge="br0", meter_id=9, flags=("kbps",),
                    bands=("type=dscp_remark rate=100 prec_level=1",))
        snap = source.replace("meters", [*source.categories["meters"], bad])
        before = read_snapshot(target.rundir, target.db)
        with pytest.raises(RestoreError, match=r"meters.*meter=9.*BAD_BAND"):
            restore_snapshot(snap, target.rundir, target.db)
        self._unchanged(before, target)
