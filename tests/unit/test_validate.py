"""Snapshot files are checked value by value: what OVS could not print is refused (defect 7)."""

from __future__ import annotations

from typing import Any

import pytest

from ovsndu.errors import ModelError
from ovsndu.model import entry_from_dict

GOOD: dict[str, dict[str, Any]] = {
    "flows": {"bridge": "br0", "table": 0, "cookie": "0x10", "priority": 100,
              "match": "ip,nw_dst=10.0.0.0/8", "actions": "ct(commit,zone=5),output:2",
              "flags": ["send_flow_rem"]},
    "meters": {"bridge": "br0", "meter_id": 0xFFFFFFFD, "flags": ["pktps"],
               "bands": ["type=drop rate=100"]},
    "tlv_mappings": {"bridge": "br0", "tlv_class": "0x0", "tlv_type": 0, "length": 124,
                     "index": 63},
    "conntrack": {"protocol": "icmpv6", "orig": "src=fd00::1,dst=fd00::2,id=0,type=128,code=0",
                  "reply": "src=fd00::2,dst=fd00::1,id=0,type=129,code=0", "zone": 65535,
                  "labels": "0xff", "nat": "src=[fd00::9]:40", "helper": "ftp"},
    "fdb": {"bridge": "br0", "port": "LOCAL", "vlan": 4095, "mac": "50:54:00:00:00:01"},
}


@pytest.mark.parametrize("category", sorted(GOOD))
def test_values_ovs_prints_pass(category: str) -> None:
    """Edge values OVS really prints (named meters, class 0, length 124, zone 65535)."""
    assert category == entry_from_dict(category, GOOD[category]).CATEGORY


@pytest.mark.parametrize(("category", "field", "value"), [
    ("flows", "priority", 2**80),
    ("flows", "priority", 65536),
    ("flows", "table", 255),
    ("flows", "match", "ip actions=output:2,controller"),
    ("flows", "match", "ip\nflow delete"),
    ("flows", "actions", "drop\nflow add actions=controller"),
    ("flows", "cookie", "0x1" + "0" * 16),
    ("flows", "flags", ["send_flow_rem", "evil"]),
    ("meters", "meter_id", 0),
    ("meters", "meter_id", 0xFFFFFFF0),
    ("meters", "bands", ["type=drop rate=1\nmeter=2"]),
    ("tlv_mappings", "length", 126),
    ("tlv_mappings", "length", 128),
    ("tlv_mappings", "index", 64),
    ("tlv_mappings", "tlv_class", "0x10000"),
    ("conntrack", "zone", 65536),
    ("conntrack", "orig", "src=1.1.1.1,dst=2.2.2.2),actions=(x"),
    ("conntrack", "labels", "0x" + "f" * 33),
    ("conntrack", "helper", "ftp,alg=x"),
    ("fdb", "vlan", 4096),
    ("fdb", "mac", "50:54:00:00:00:01,x"),
])
def test_hostile_values_are_refused(category: str, field: str, value: object) -> None:
    """One line naming the category and the field."""
    data = {**GOOD[category], field: value}
    with pytest.raises(ModelError, match=rf"^{category}: field {field!r}") as info:
        entry_from_dict(category, data)
    assert "\n" not in str(info.value)
