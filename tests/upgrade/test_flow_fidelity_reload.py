"""``ovsndu reload`` keeps the flow corpus (``ovsndu.testing.flow_corpus``) identical in
the raw output of ``ovs-ofctl`` (issue 10)."""

from __future__ import annotations

from ovsndu.testing.flow_corpus import populate_flows, raw_openflow
from tests.upgrade.conftest import Rig


def test_reload_keeps_every_rule(rig: Rig) -> None:
    added, _ = populate_flows(rig.sb)
    assert len(added) >= 1000
    before = raw_openflow(rig.sb)
    code, result = rig.reload()
    assert code == 0, (result.get("reason"), result.get("record", {}).get("anomalies"))
    after = raw_openflow(rig.sb)
    for name in before:
        assert after[name] == before[name], name
