"""When the final read may freeze conntrack entry creation (ovsndu.ovs.ct_freeze)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovsndu.config import Config, load_config
from ovsndu.errors import ConfigError
from ovsndu.model import Flow, Group
from ovsndu.ovs.ct_freeze import nat_note, uses_nat, why_not_freeze
from ovsndu.upgrade.history import UpgradeRecord
from ovsndu.upgrade.lastread import LastRead

NETDEV = ["netdev@ovs-netdev"]


def _flow(actions: str, table: int = 0) -> Flow:
    return Flow(bridge="br0", table=table, cookie="0x0", priority=1, match="ip",
                actions=actions)


def _group(*buckets: str) -> Group:
    return Group(bridge="br0", group_id=7, type="select", buckets=buckets)


def test_a_pipeline_without_nat_is_frozen() -> None:
    flows = [_flow("ct(commit,zone=1),NORMAL"), _flow("ct(table=1,zone=1)"),
             _flow("set_field:1->reg0,resubmit(,2)")]
    nat = uses_nat(flows, [_group("actions=output:1")])
    assert nat is None
    assert why_not_freeze(NETDEV, nat) is None
    assert why_not_freeze(NETDEV, nat, freeze_nat=False) is None


def test_where_the_pipeline_uses_nat() -> None:
    nat = _flow("ct(commit,zone=9,nat(src=10.9.9.9:4000)),output:2", table=3)
    assert uses_nat([_flow("NORMAL"), nat], []) == "br0 table 3"
    # OVN's load balancer: ct_lb_mark becomes a group whose buckets commit with nat(dst=)
    lb = _group("bucket_id:0,actions=ct(commit,table=2,zone=5,nat(dst=10.0.0.5:80))")
    assert uses_nat([], [lb]) == "br0 group 7"
    # any nat action counts, the un-NAT of OVN's ct(table=..,zone=..,nat) too
    assert uses_nat([_flow("ct(table=8,zone=NXM_NX_REG13[0..15],nat)")], []) == "br0 table 0"
    # ct_state matches on +snat/+dnat are matches, not the nat action
    assert uses_nat([_flow("ct_clear,NORMAL")], []) is None


def test_a_nat_pipeline_is_frozen_unless_turned_off() -> None:
    """The lead's decision: NAT pipelines frozen by default (the trade named, below);
    ``ct_freeze_nat = false``: not frozen, as before, and the reason says so."""
    assert why_not_freeze(NETDEV, "br-int group 3") is None
    why = why_not_freeze(NETDEV, "br-int group 3", freeze_nat=False)
    assert why is not None
    assert "br-int group 3" in why and "ct_freeze_nat = false" in why and "NAT" in why


def test_the_kernel_datapath_is_not() -> None:
    for nat in (None, "br0 table 3"):
        why = why_not_freeze(["system@ovs-system"], nat)
        assert why is not None and "system@ovs-system" in why


def test_a_frozen_nat_pipeline_is_named_with_the_refused_commits() -> None:
    text = nat_note("br-int group 3", 17)
    assert text.startswith("new connections' first packets passed without a conntrack "
                           "entry and without NAT during the freeze: 17 commits refused")
    assert "br-int group 3" in text
    assert "an unknown number of commits refused" in nat_note("br-int table 9", None)


def test_the_last_read_names_only_a_frozen_nat_pipeline() -> None:
    last = LastRead(pid=1)
    assert last.nat_note() is None  # not frozen at all
    last.nat = "br-int group 3"
    assert last.nat_note() is None  # NAT seen, but the read was not frozen
    last.frozen_wall, last.ct_refused = 1.0, 4
    assert last.nat_note() == nat_note("br-int group 3", 4)
    plain = LastRead(pid=1, frozen_wall=1.0, ct_refused=4)
    assert plain.nat_note() is None  # no NAT: nothing passed untranslated


def test_ct_freeze_nat_is_a_checked_setting(tmp_path: Path) -> None:
    assert Config().upgrade.ct_freeze_nat is True
    path = tmp_path / "c.toml"
    path.write_text("[upgrade]\nct_freeze_nat = false\n")
    assert load_config(path).upgrade.ct_freeze_nat is False
    assert Config().replace(ct_freeze_nat=False).upgrade.ct_freeze_nat is False
    path.write_text("[upgrade]\nct_freeze_nat = 0\n")
    with pytest.raises(ConfigError, match="ct_freeze_nat: expected true or false"):
        load_config(path)


def test_the_limits_to_put_back_survive_the_record() -> None:
    rec = UpgradeRecord(id="x", started_at="2026-11-30T00:00:00+00:00",
                        ct_frozen={"netdev@ovs-netdev": 400000})
    assert UpgradeRecord.from_dict(rec.to_dict()).ct_frozen == {"netdev@ovs-netdev": 400000}
