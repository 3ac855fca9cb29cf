"""A bundle names a refused add by its line, also for rules carried as bytes (kept as the
rule itself, its text made only when needed)."""

from __future__ import annotations

from ovsndu.model import Flow, Group
from ovsndu.ovs.ofbundle import HEADER, CapturedBundle, line_of, splice


def test_lines_of_text_and_of_rules_carried_as_bytes() -> None:
    flow = Flow(bridge="br0", table=3, cookie="0x0", priority=10, match="tcp,tp_dst=80",
                actions="meter:9", wire="AAAA")
    group = Group(bridge="br0", group_id=4, type="select",
                  buckets=("bucket_id:0,actions=output:1",), wire="AAAA")
    bundle = CapturedBundle(version=6, open_msg=b"", adds=HEADER.pack(6, 34, 8, 5),
                            barrier=b"", commit=b"", add_lines={5: "flow add ip actions=drop"})
    splice(bundle, 1, [HEADER.pack(6, 34, 8, 6), HEADER.pack(6, 34, 8, 7)], [flow, group])
    assert bundle.count == 3 and len(bundle.adds) == 24
    assert line_of(bundle, 5) == "flow add ip actions=drop"
    assert line_of(bundle, 6) == ("flow add table=3,cookie=0x0,priority=10,tcp,tp_dst=80 "
                                  "actions=meter:9")
    assert line_of(bundle, 7) == ("group add group_id=4,type=select,"
                                  "bucket=bucket_id:0,actions=output:1")
    assert line_of(bundle, 8) is None
