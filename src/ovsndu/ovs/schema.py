"""OVSDB schemas compared: what a conversion between two versions changes and loses.

Pure: schemas come in as parsed JSON (``ovsdb-client get-schema``, a ``.ovsschema``
file, the ``schema`` column of ``_Server.Database``), rows as decoded values.  The
adapter that reads and converts the live database is :mod:`ovsndu.ovs.dbschema`.

A conversion to a schema that lacks a table or column drops its values silently
(``ovsdb-client convert`` and ``ovsdb-tool convert`` alike): :func:`lost_values`
names every table and column whose data would go, so a downgrade can be refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ovsndu.errors import OvsdbError

Direction = Literal["same", "upgrade", "downgrade"]


def version_tuple(version: str) -> tuple[int, ...]:
    """``"8.3.1"`` → ``(8, 3, 1)``; OvsdbError for anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise OvsdbError(f"not a schema version: {version!r}")
    return tuple(int(p) for p in parts)


@dataclass(frozen=True, slots=True)
class Column:
    """One column's type, as far as defaults go."""

    atom: str  # "integer", "string", ... of the key
    min: int
    max: int | str  # an integer or "unlimited"
    is_map: bool

    @property
    def default(self) -> Any:
        """The value a row has when the column is not set (decoded form)."""
        if self.is_map:
            return {}
        if self.min == 0 or self.max != 1:
            return []
        return _ATOM_DEFAULTS.get(self.atom)


_ATOM_DEFAULTS: Mapping[str, Any] = {
    "integer": 0, "real": 0.0, "boolean": False, "string": "",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


@dataclass(frozen=True, slots=True)
class Schema:
    """The parts of a schema a conversion cares about."""

    name: str
    version: str
    tables: Mapping[str, Mapping[str, Column]]

    @classmethod
    def from_json(cls, data: object) -> Schema:
        """Parse a schema document; OvsdbError naming what is malformed."""
        if not isinstance(data, Mapping):
            raise OvsdbError(f"schema must be an object, got {type(data).__name__}")
        name, version, tables = data.get("name"), data.get("version"), data.get("tables")
        if not isinstance(name, str) or not isinstance(version, str):
            raise OvsdbError("schema lacks a name or version")
        version_tuple(version)
        if not isinstance(tables, Mapping):
            raise OvsdbError(f"schema {name} {version} has no tables")
        parsed: dict[str, dict[str, Column]] = {}
        for table, body in tables.items():
            columns = body.get("columns") if isinstance(body, Mapping) else None
            if not isinstance(columns, Mapping):
                raise OvsdbError(f"schema {name} {version}: table {table} has no columns")
            parsed[table] = {col: _column(table, col, spec.get("type") if isinstance(
                spec, Mapping) else None) for col, spec in columns.items()}
        return cls(name, version, parsed)

    @property
    def key(self) -> tuple[int, ...]:
        """The version as a tuple, for ordering."""
        return version_tuple(self.version)


def _column(table: str, col: str, type_: object) -> Column:
    if isinstance(type_, str):
        return Column(type_, 1, 1, False)
    if not isinstance(type_, Mapping):
        raise OvsdbError(f"schema: column {table}.{col} has no type")
    key = type_.get("key")
    atom = key if isinstance(key, str) else key.get("type") if isinstance(key, Mapping) else None
    if not isinstance(atom, str):
        raise OvsdbError(f"schema: column {table}.{col} has no key type")
    min_, max_ = type_.get("min", 1), type_.get("max", 1)
    if not isinstance(min_, int) or not (isinstance(max_, int) or max_ == "unlimited"):
        raise OvsdbError(f"schema: column {table}.{col} has a malformed min/max")
    return Column(atom, min_, max_, "value" in type_)


def direction(live: Schema, target: Schema) -> Direction:
    """Whether going from *live* to *target* is an upgrade, a downgrade or nothing."""
    if live.name != target.name:
        raise OvsdbError(f"schema {target.name} is not the database's ({live.name})")
    if live.key == target.key:
        return "same"
    return "upgrade" if live.key < target.key else "downgrade"


def missing_columns(live: Schema, target: Schema) -> list[tuple[str, str]]:
    """``(table, column)`` of *live* that *target* lacks (a whole table as column ``*``)."""
    out: list[tuple[str, str]] = []
    for table, columns in sorted(live.tables.items()):
        if table not in target.tables:
            out.append((table, "*"))
            continue
        out.extend((table, col) for col in sorted(columns) if col not in target.tables[table])
    return out


def lost_values(live: Schema, target: Schema,
                rows: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[str]:
    """``"Table.column (N rows)"`` for every missing column that holds a non-default value.

    *rows*: table → rows (decoded values) holding at least the missing columns; a
    missing table (``column "*"``) loses data when it has any row.
    """
    out = []
    for table, col in missing_columns(live, target):
        table_rows = list(rows.get(table, ()))
        if col == "*":
            n = len(table_rows)
        else:
            default = live.tables[table][col].default
            n = sum(1 for row in table_rows if row.get(col, default) != default)
        if n:
            out.append(f"{table}.{col} ({n} row{'s' if n != 1 else ''})" if col != "*"
                       else f"{table} ({n} row{'s' if n != 1 else ''}, whole table)")
    return out
