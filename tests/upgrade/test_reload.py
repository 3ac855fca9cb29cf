"""Live upgrades through the real supervisor on a real vswitchd (dummy datapath)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ovsndu.model import CATEGORIES
from ovsndu.ovs.readers import read_snapshot
from tests.upgrade.conftest import VSWITCHD, Rig


def _tools_output(rig: Rig) -> dict[str, list[str]]:
    """What the standard tools print, minus counters and ages."""
    import re

    env_run = rig.sb.run
    out = {
        "vsctl": env_run(["ovs-vsctl", f"--db={rig.sb.db}", "show"]),
        "flows": rig.sb.ofctl("br0", "dump-flows", options=("--no-stats",)),
        "groups": rig.sb.ofctl("br0", "dump-groups"),
        "meters": rig.sb.ofctl("br0", "dump-meters", version="OpenFlow13"),
        "tlv": rig.sb.ofctl("br0", "dump-tlv-map"),
        "fdb": re.sub(r"\s+\d+$", "", rig.sb.appctl("fdb/show", "br0"), flags=re.M),
        "ct": re.sub(r"timeout=\d+,", "", rig.sb.appctl("dpctl/dump-conntrack")),
        "neigh": rig.sb.appctl("tnl/neigh/show"),
        "routes": rig.sb.appctl("ovs/route/show"),
    }
    out["vsctl"] = re.sub(r'ovs_version: "[^"]*"', "", out["vsctl"])
    # The tools print in hash order, which a new process need not share.
    return {k: sorted(v.splitlines()) for k, v in out.items()}


def test_reload_same_binary(rig: Rig) -> None:
    """New pid, every category equal by digest and by the tools' own output, old one gone."""
    before = read_snapshot(rig.sb.rundir, rig.sb.db)
    tools_before = _tools_output(rig)
    old = before.vswitchd.pid
    code, result = rig.reload()
    assert code == 0, result
    assert result["outcome"] == "committed"
    after = read_snapshot(rig.sb.rundir, rig.sb.db)
    assert after.vswitchd.pid != old
    assert rig.vswitchd_pids() == [after.vswitchd.pid]
    for name in CATEGORIES:
        assert after.digest(name) == before.digest(name), name
    assert _tools_output(rig) == tools_before
    status = rig.status()
    assert status["vswitchd"]["pid"] == after.vswitchd.pid
    assert status["last_upgrade"]["outcome"] == "committed"
    record = result["record"]
    assert [p["phase"] for p in record["phases"]] == [
        "preflight", "snapshot", "client", "validation", "standby", "handover", "commit"]
    assert record["counts"] == before.counts()


def test_reload_different_binary(rig: Rig, tmp_path: Path) -> None:
    """A copy of the binary at another path (as a package upgrade installs): takes over."""
    new = tmp_path / "ovs-vswitchd-new"
    shutil.copy2(VSWITCHD, new)
    before = read_snapshot(rig.sb.rundir, rig.sb.db)
    code, result = rig.reload("--vswitchd", str(new))
    assert code == 0, result
    assert result["record"]["to_binary"] == str(new)
    pid = read_snapshot(rig.sb.rundir, rig.sb.db).vswitchd.pid
    assert Path(f"/proc/{pid}/exe").resolve() == new
    assert read_snapshot(rig.sb.rundir, rig.sb.db).digests() == before.digests()
    history = rig.cli("history", "--json")
    assert history.returncode == 0
    assert '"committed"' in history.stdout
