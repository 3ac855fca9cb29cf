"""``ovsndu reload`` keeps the state corpus identical in OVS's own tools' output (issue 10).

The supervisor's sandbox gets the state corpus on top of the sample (conntrack of every
protocol with helpers and related connections, FDB on VLAN ports, TLV edge cases,
named meters); a reload of the same binary must commit with nothing uncarried and the
raw dumps — conntrack without timeouts (``-m``, without ids), FDB without ages,
``dump-tlv-map``, ``dump-meters`` — must be what they were.
"""

from __future__ import annotations

from ovsndu.testing.state_corpus import (
    BRIDGE,
    VLAN_BRIDGE,
    populate_conntrack,
    populate_fdb,
    populate_openflow_extras,
    raw_conntrack,
    raw_fdb,
    raw_ofctl,
)
from tests.upgrade.conftest import Rig


def _raw(rig: Rig) -> dict[str, object]:
    sb = rig.sb
    meters = raw_ofctl(sb, BRIDGE, "dump-meters", version="OpenFlow13")
    return {
        "conntrack": raw_conntrack(sb, verbose=True),
        "fdb": raw_fdb(sb, VLAN_BRIDGE),
        "tlv": raw_ofctl(sb, BRIDGE, "dump-tlv-map"),
        "meters": sorted(b.strip() for b in meters.split("\n\n") if "meter=" in b),
    }


def test_reload_keeps_the_state_corpus(rig: Rig) -> None:
    """Committed, no anomaly, raw output identical."""
    populate_conntrack(rig.sb)
    populate_fdb(rig.sb)
    populate_openflow_extras(rig.sb)
    before = _raw(rig)
    assert len(before["conntrack"]) > 30  # type: ignore[arg-type]
    code, result = rig.reload()
    assert code == 0, result
    record = result["record"]
    assert record["outcome"] == "committed"
    assert record["uncarried"] == {}
    assert not [a for a in record["anomalies"] if a.startswith("uncarried")]
    after = _raw(rig)
    for name, value in before.items():
        assert after[name] == value, name
