"""Rules carried as bytes (defect 5 of issue 10): what OVS prints but cannot parse again,
and rules only OpenFlow 1.0 expresses, come back identical — judged by ``ovs-ofctl``."""

from __future__ import annotations

import base64
import subprocess

import pytest

from ovsndu.model import Flow, Snapshot
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.restore import restore_snapshot
from ovsndu.ovs.sandbox import Sandbox
from tests.conftest import require_ovs

# (protocol it is added with, rule): each broke the text round trip
RULES = [
    # OF1.0 implies reset_counts; OF1.5 refuses fin_timeout on a non-TCP match
    ("OpenFlow10", "priority=1051,ip actions=fin_timeout(idle_timeout=10,hard_timeout=20),"
                   "output:1"),
    # printed as set_field:10/0xfffff->mpls_label, which ovs-ofctl refuses ("invalid mask")
    ("OpenFlow10", "priority=5,mpls actions=load:10->OXM_OF_MPLS_LABEL[0..19],output:2"),
    # printed as set_field:1/0x3->nw_ecn ("invalid mask")
    ("OpenFlow10", "priority=6,ip actions=load:1->NXM_NX_IP_ECN[0..1],output:2"),
    ("OpenFlow10", "table=7,cookie=0x99,priority=8,tcp,tp_dst=80,idle_timeout=300,"
                   "actions=mod_tp_dst:8080,resubmit(,9)"),
    ("OpenFlow13", "table=3,priority=9,ip,actions=set_field:1->nw_ecn,goto_table:4"),
    ("OpenFlow15", "table=4,priority=10,importance=7,send_flow_rem,no_packet_counts,udp,"
                   "actions=ct(commit,zone=5,nat(src=10.0.0.1:1000-2000)),output:2"),
]


def _switch(sb: Sandbox) -> None:
    sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=dummy",
             "protocols=OpenFlow10,OpenFlow13,OpenFlow15")
    for n in (1, 2):
        sb.vsctl("add-port", "br0", f"p{n}", "--", "set", "interface", f"p{n}", "type=dummy",
                 f"ofport_request={n}")


def _raw(sb: Sandbox) -> list[str]:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--no-stats", "--no-names",
                          "dump-flows", "br0"], env=sb.env, capture_output=True, text=True,
                         check=True).stdout
    return sorted(line for line in out.splitlines() if " reply (" not in line)


@pytest.fixture(name="source", scope="module")
def _source() -> tuple[Snapshot, list[str]]:
    require_ovs()
    with Sandbox() as sb:
        _switch(sb)
        for version, rule in RULES:
            subprocess.run(["ovs-ofctl", "-O", version, "add-flow", "br0", rule], env=sb.env,
                           check=True, capture_output=True)
        return read_snapshot(sb.rundir, sb.db), _raw(sb)


def test_every_rule_carries_bytes_in_the_protocol_that_expresses_it(
        source: tuple[Snapshot, list[str]]) -> None:
    flows = [f for f in source[0].categories["flows"] if isinstance(f, Flow)]
    assert len(flows) == len(RULES) + 1  # and the default NORMAL rule
    assert len(source[1]) == len(flows)
    versions = {f.priority: base64.b64decode(f.wire)[0] for f in flows}
    assert versions[1051] == 1  # only OpenFlow 1.0 (NXT_FLOW_MOD) expresses it
    assert {v for p, v in versions.items() if p != 1051} == {6}


def test_restore_keeps_the_raw_table(source: tuple[Snapshot, list[str]]) -> None:
    snap, raw = source
    with Sandbox() as target:
        _switch(target)
        restore_snapshot(snap, target.rundir, target.db)
        assert _raw(target) == raw
        assert any("set_field:10/0xfffff->mpls_label" in line for line in _raw(target))


# Buckets whose printed actions ovs-ofctl refuses to parse again ("invalid mask"): a group
# carried as text could not be created again, so it is carried as its group-mod bytes.
GROUPS = [
    "group_id=7,type=all,bucket=load:10->OXM_OF_MPLS_LABEL[0..19],output:1,"
    "bucket=load:1->NXM_NX_IP_ECN[0..1],output:2",
    "group_id=8,type=select,selection_method=hash,fields(ip_src,tcp_dst),"
    "bucket=bucket_id:3,weight:20,output:1,bucket=bucket_id:9,weight:5,output:2",
    "group_id=9,type=ff,bucket=watch_port:1,output:1,bucket=watch_group:7,group:7",
]


def _raw_groups(sb: Sandbox) -> list[str]:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-groups", "br0"], env=sb.env,
                         capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if " reply (" not in line)


def test_groups_carried_as_bytes_come_back_identical() -> None:
    require_ovs()
    with Sandbox() as sb:
        _switch(sb)
        for group in GROUPS:
            subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "add-group", "br0", group],
                           env=sb.env, check=True, capture_output=True)
        snap, raw = read_snapshot(sb.rundir, sb.db), _raw_groups(sb)
    groups = snap.categories["groups"]
    assert len(groups) == 3 and all(base64.b64decode(g.wire)[:2] == b"\x06\x0f"  # type: ignore[attr-defined]
                                    for g in groups)
    assert any("set_field:10/0xfffff->mpls_label" in line for line in raw)
    with Sandbox() as target:
        _switch(target)
        restore_snapshot(snap, target.rundir, target.db)
        assert _raw_groups(target) == raw
