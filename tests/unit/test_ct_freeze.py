"""When the final read may freeze conntrack entry creation (ovsndu.ovs.ct_freeze)."""

from __future__ import annotations

from ovsndu.model import Flow, Group
from ovsndu.ovs.ct_freeze import why_not_freeze
from ovsndu.upgrade.history import UpgradeRecord


def _flow(actions: str, table: int = 0) -> Flow:
    return Flow(bridge="br0", table=table, cookie="0x0", priority=1, match="ip",
                actions=actions)


def _group(*buckets: str) -> Group:
    return Group(bridge="br0", group_id=7, type="select", buckets=buckets)


def test_a_pipeline_without_nat_is_frozen() -> None:
    flows = [_flow("ct(commit,zone=1),NORMAL"), _flow("ct(table=1,zone=1)"),
             _flow("set_field:1->reg0,resubmit(,2)")]
    assert why_not_freeze(["netdev@ovs-netdev"], flows, [_group("actions=output:1")]) is None


def test_nat_in_a_flow_or_a_group_bucket_is_not() -> None:
    nat = _flow("ct(commit,zone=9,nat(src=10.9.9.9:4000)),output:2", table=3)
    why = why_not_freeze(["netdev@ovs-netdev"], [_flow("NORMAL"), nat], [])
    assert why is not None and "NAT" in why and "br0 table 3" in why
    lb = _group("bucket_id:0,actions=ct(commit,table=2,zone=5,nat(dst=10.0.0.5:80))")
    why = why_not_freeze(["netdev@ovs-netdev"], [], [lb])
    assert why is not None and "br0 group 7" in why
    # ct_state matches on +snat/+dnat are matches, not the nat action
    assert why_not_freeze(["netdev@ovs-netdev"], [_flow("ct_clear,NORMAL")], []) is None


def test_the_kernel_datapath_is_not() -> None:
    why = why_not_freeze(["system@ovs-system"], [_flow("NORMAL")], [])
    assert why is not None and "system@ovs-system" in why


def test_the_limits_to_put_back_survive_the_record() -> None:
    rec = UpgradeRecord(id="x", started_at="2026-11-30T00:00:00+00:00",
                        ct_frozen={"netdev@ovs-netdev": 400000})
    assert UpgradeRecord.from_dict(rec.to_dict()).ct_frozen == {"netdev@ovs-netdev": 400000}
