"""What cannot be carried does not block a reload; it is named, counted, or refused.

Defect 8 of issue 10: a MAC learned on a port that then became a mirror's output port
stays in the old process's table, but the bridge drops frames arriving on a mirror
output port before learning, so no replay can recreate it; every reload used to roll
back ("1 missing").  Now (3.1 → 3.1) the reload commits, the record and the journal
name the entry, and with ``uncarried = "refuse"`` the reload is refused (exit 2).
"""

from __future__ import annotations

import re

from ovsndu.ovs.readers import read_snapshot
from tests.upgrade.conftest import Rig

MIRROR_MAC = "50:54:00:00:00:21"  # the sample learns it on p2 (ofport 2)


def _make_p2_a_mirror_output(rig: Rig) -> None:
    rig.sb.vsctl("--", "--id=@p", "get", "port", "p2", "--", "--id=@m", "create", "mirror",
                 "name=m0", "select_all=true", "output_port=@p",
                 "--", "add", "bridge", "br0", "mirrors", "@m")
    fdb = rig.sb.appctl("fdb/show", "br0")
    assert re.search(rf"^\s+2\s+0\s+{MIRROR_MAC}\s+\d+$", fdb, re.M), fdb


def _fdb_without_ages(rig: Rig) -> list[str]:
    return sorted(re.sub(r"\s+\d+$", "", line) for line in
                  rig.sb.appctl("fdb/show", "br0").splitlines()[1:])


def test_mirror_output_fdb_is_named_not_fatal(rig: Rig) -> None:
    """The reload commits; the entry is an anomaly counted in the record; the rest of the
    FDB is identical in fdb/show."""
    _make_p2_a_mirror_output(rig)
    before = _fdb_without_ages(rig)
    old_pid = read_snapshot(rig.sb.rundir, rig.sb.db).vswitchd.pid
    code, result = rig.reload()
    assert code == 0, result
    record = result["record"]
    assert record["outcome"] == "committed"
    assert record["uncarried"] == {"fdb": 1}
    named = [a for a in record["anomalies"] if a.startswith("uncarried fdb:")]
    assert len(named) == 1 and MIRROR_MAC in named[0], record["anomalies"]
    after = _fdb_without_ages(rig)
    lost = [line for line in before if line not in after]
    assert len(lost) == 1 and MIRROR_MAC in lost[0], (before, after)
    assert read_snapshot(rig.sb.rundir, rig.sb.db).vswitchd.pid != old_pid
    journal = rig.log_path.read_text()
    assert "upgrade.uncarried" in journal and MIRROR_MAC in journal


def test_refuse_setting_refuses_before_any_change(rig: Rig) -> None:
    """``[upgrade] uncarried = "refuse"``: exit 2, the same process serves, FDB unchanged."""
    _make_p2_a_mirror_output(rig)
    rig.cfg_path.write_text(rig.cfg.replace(uncarried="refuse").to_toml())
    before = _fdb_without_ages(rig)
    old_pid = read_snapshot(rig.sb.rundir, rig.sb.db).vswitchd.pid
    code, result = rig.reload()
    assert code == 2, result
    assert result["record"]["outcome"] == "refused"
    assert MIRROR_MAC in result["record"]["reason"]
    assert read_snapshot(rig.sb.rundir, rig.sb.db).vswitchd.pid == old_pid
    assert _fdb_without_ages(rig) == before
