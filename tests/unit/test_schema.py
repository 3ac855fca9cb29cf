"""Schema comparison (pure): direction, missing columns, values a downgrade would drop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ovsndu.errors import OvsdbError
from ovsndu.ovs.schema import Schema, direction, lost_values, missing_columns
from ovsndu.upgrade.conversion import target_schema_file


def _schema(version: str, mirror: dict[str, Any], extra: dict[str, Any] | None = None
            ) -> Schema:
    tables = {"Mirror": {"columns": mirror}, **(extra or {})}
    return Schema.from_json({"name": "Open_vSwitch", "version": version, "tables": tables})


OLD = _schema("8.3.1", {"name": {"type": "string"}})
NEW = _schema("8.8.0", {
    "name": {"type": "string"},
    "filter": {"type": {"key": {"type": "string"}, "min": 0, "max": 1}},
    "weight": {"type": "integer"},
    "opts": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
}, {"CT_Zone": {"columns": {"limit": {"type": "integer"}}}})


def test_direction() -> None:
    assert direction(OLD, NEW) == "upgrade"
    assert direction(NEW, OLD) == "downgrade"
    assert direction(NEW, NEW) == "same"
    other = Schema.from_json({"name": "OVN_Southbound", "version": "20.0.0", "tables": {}})
    with pytest.raises(OvsdbError, match="not the database's"):
        direction(NEW, other)


def test_missing_columns() -> None:
    assert missing_columns(NEW, OLD) == [
        ("CT_Zone", "*"), ("Mirror", "filter"), ("Mirror", "opts"), ("Mirror", "weight")]
    assert missing_columns(OLD, NEW) == []


def test_lost_values_names_only_columns_holding_data() -> None:
    rows = {"Mirror": [{"filter": [], "weight": 0, "opts": {}},
                       {"filter": "tcp", "weight": 0, "opts": {}},
                       {"filter": "udp", "weight": 3, "opts": {}}],
            "CT_Zone": []}
    assert lost_values(NEW, OLD, rows) == ["Mirror.filter (2 rows)", "Mirror.weight (1 row)"]
    rows["CT_Zone"] = [{}]
    assert "CT_Zone (1 row, whole table)" in lost_values(NEW, OLD, rows)
    assert lost_values(NEW, OLD, {"Mirror": [{"filter": [], "weight": 0, "opts": {}}]}) == []


@pytest.mark.parametrize("doc", [
    None, {"name": "x"}, {"name": "x", "version": "8.3", "tables": {}},
    {"name": "x", "version": "1.0.0", "tables": {"T": {"columns": {"c": {}}}}},
])
def test_malformed_schema_is_one_error(doc: object) -> None:
    with pytest.raises(OvsdbError):
        Schema.from_json(doc)


def test_target_schema_file_precedence(tmp_path: Path) -> None:
    """--schema, then [ovs] schema for the configured binary, then the file beside it."""
    prefix = tmp_path / "usr"
    (prefix / "sbin").mkdir(parents=True)
    (prefix / "share" / "openvswitch").mkdir(parents=True)
    binary = prefix / "sbin" / "ovs-vswitchd"
    binary.write_text("")
    beside = prefix / "share" / "openvswitch" / "vswitch.ovsschema"
    beside.write_text("{}")
    unpacked = tmp_path / "ovs-3.5" / "bin"
    unpacked.mkdir(parents=True)
    (unpacked / "ovs-vswitchd").write_text("")
    (tmp_path / "ovs-3.5" / "vswitch.ovsschema").write_text("{}")
    lone = tmp_path / "lone" / "ovs-vswitchd"
    lone.parent.mkdir()
    lone.write_text("")

    def target(b: Path, override: str = "") -> Path | None:
        return target_schema_file(str(b), configured_binary=str(binary),
                                  configured_schema="/etc/x.ovsschema", override=override)

    assert target(lone, "/o.ovsschema") == Path("/o.ovsschema")
    assert target(binary) == Path("/etc/x.ovsschema")
    assert target(unpacked / "ovs-vswitchd") == tmp_path / "ovs-3.5" / "vswitch.ovsschema"
    assert target(lone) is None
    assert target_schema_file(str(binary), configured_binary="/other", configured_schema="",
                              override="") == beside
