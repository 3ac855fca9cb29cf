"""Bundles encoded ahead of time by ovs-ofctl and sent later to a real vswitchd."""

from __future__ import annotations

import pytest

from ovsndu.errors import VswitchdError
from ovsndu.ovs import ofbundle
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import Sandbox


def _bridge(sb: Sandbox) -> None:
    sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
             "fail_mode=secure",
             "--", "add-port", "br0", "p1", "--", "set", "interface", "p1", "type=dummy",
             "ofport_request=1")


def test_replayed_bundle_installs_exactly_what_ovs_ofctl_would(sandbox: Sandbox) -> None:
    """The same lines through capture+replay and through ovs-ofctl give equal tables."""
    _bridge(sandbox)
    lines = ["flow delete", "group delete group_id=all",
             "group add group_id=3,type=all,bucket=output:1",
             *(f"flow add table={i % 3},priority={i},tcp,tp_dst={i},"
               f"actions=ct(commit,zone=2,exec(set_field:{i}->ct_mark)),group:3"
               for i in range(1, 400))]
    encoded = ofbundle.capture(lines, "OpenFlow15")
    assert encoded.count == len(lines)
    assert read_snapshot(sandbox.rundir, sandbox.db).counts()["flows"] == 0, "nothing sent yet"
    ofbundle.replay(sandbox.mgmt_path("br0"), encoded)
    via_replay = read_snapshot(sandbox.rundir, sandbox.db)
    sandbox.ofctl("br0", "del-flows")
    sandbox.ofctl("br0", "bundle", "-", input_text="\n".join(lines) + "\n")
    via_ofctl = read_snapshot(sandbox.rundir, sandbox.db)
    assert via_replay.counts()["flows"] == 399
    assert via_replay.digest("flows") == via_ofctl.digest("flows")
    assert via_replay.digest("groups") == via_ofctl.digest("groups")


def test_refused_line_is_named_and_nothing_lands(sandbox: Sandbox) -> None:
    """A rule the switch refuses: error names the line; the bundle is discarded."""
    _bridge(sandbox)
    lines = ["flow add table=0,priority=1,actions=drop",
             "flow add table=0,priority=5,actions=meter:9"]
    with pytest.raises(VswitchdError, match=r"INVALID_METER for: flow add .*meter:9"):
        ofbundle.replay(sandbox.mgmt_path("br0"), ofbundle.capture(lines, "OpenFlow15"))
    assert read_snapshot(sandbox.rundir, sandbox.db).counts()["flows"] == 0


def test_text_ovs_ofctl_cannot_parse_is_refused_before_sending() -> None:
    """A line ovs-ofctl rejects fails at capture, with its message."""
    with pytest.raises(VswitchdError, match="unknown action frobnicate"):
        ofbundle.capture(["flow add priority=1,actions=frobnicate"], "OpenFlow15")
