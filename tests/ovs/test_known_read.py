"""A read given the rules an earlier read found (a snapshot's): the same rules, byte for
byte, are that read's very entries; any difference reads (and reports) everything."""

from __future__ import annotations

import subprocess

from ovsndu.model import Flow
from ovsndu.ovs.readers import StateReader, read_snapshot
from ovsndu.ovs.sandbox import Sandbox
from tests.conftest import require_ovs
from tests.ovs.test_wire_flows import RULES, _switch


def _add(sb: Sandbox, version: str, rule: str) -> None:
    subprocess.run(["ovs-ofctl", "-O", version, "add-flow", "br0", rule], env=sb.env,
                   check=True, capture_output=True)


def test_same_rules_are_the_known_ones_and_a_change_is_read() -> None:
    require_ovs()
    with Sandbox() as sb:
        _switch(sb)
        for version, rule in RULES[1:]:  # all carried as OpenFlow 1.5 flow-mods
            _add(sb, version, rule)
        snap = read_snapshot(sb.rundir, sb.db)
        again = StateReader(sb.rundir, sb.db, known=snap).snapshot()
        assert again.categories["flows"] is snap.categories["flows"]
        assert again.digest("flows") == snap.digest("flows")
        # One rule's actions changed (same match): its bytes differ, everything is read.
        _add(sb, "OpenFlow13", "table=3,priority=9,ip,actions=set_field:2->nw_ecn,goto_table:4")
        changed = StateReader(sb.rundir, sb.db, known=snap).snapshot()
        plain = read_snapshot(sb.rundir, sb.db)
    assert changed.categories["flows"] is not snap.categories["flows"]
    assert changed.digest("flows") == plain.digest("flows") != snap.digest("flows")
    actions = {f.actions for f in changed.categories["flows"] if isinstance(f, Flow)
               and f.priority == 9}
    assert actions == {"set_field:2->nw_ecn,goto_table:4"}


def test_a_rule_only_openflow10_carries_is_read_in_full() -> None:
    """Its bytes are an NXT_FLOW_MOD, never a flow-desc's flow-mod: no shortcut, and the
    read still gives it those bytes."""
    require_ovs()
    with Sandbox() as sb:
        _switch(sb)
        for version, rule in RULES:
            _add(sb, version, rule)
        snap = read_snapshot(sb.rundir, sb.db)
        again = StateReader(sb.rundir, sb.db, known=snap).snapshot()
    assert again.categories["flows"] is not snap.categories["flows"]
    assert again.categories["flows"] == snap.categories["flows"] or \
        again.digest("flows") == snap.digest("flows")
    assert {f.wire for f in again.categories["flows"] if isinstance(f, Flow)} == \
        {f.wire for f in snap.categories["flows"] if isinstance(f, Flow)}


def test_a_new_bridge_is_not_taken_for_known() -> None:
    """Every known bridge matched, but another bridge has rules: they are read too."""
    require_ovs()
    with Sandbox() as sb:
        _switch(sb)
        _add(sb, "OpenFlow15", "priority=5,ip,actions=output:2")
        snap = read_snapshot(sb.rundir, sb.db)
        sb.vsctl("add-br", "br1", "--", "set", "bridge", "br1", "datapath_type=dummy",
                 "protocols=OpenFlow10,OpenFlow13,OpenFlow15")
        again = StateReader(sb.rundir, sb.db, known=snap).snapshot()
    bridges = {f.bridge for f in again.categories["flows"] if isinstance(f, Flow)}
    assert bridges == {"br0", "br1"}  # br1's default NORMAL rule
    assert again.categories["flows"] is not snap.categories["flows"]
