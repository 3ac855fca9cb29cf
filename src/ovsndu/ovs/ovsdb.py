"""OVSDB over JSON-RPC: the few selects and updates ovsndu needs on ``Open_vSwitch``."""

from __future__ import annotations

from typing import Any

from ovsndu.errors import OvsdbError
from ovsndu.ovs.jsonrpc import JsonRpcClient

DB = "Open_vSwitch"


def socket_path(db: str) -> str:
    """``unix:/path`` or ``/path`` → ``/path``; other remotes are not supported."""
    if db.startswith("unix:"):
        return db[5:]
    if db.startswith("/"):
        return db
    raise OvsdbError(f"unsupported OVSDB remote {db!r} (use unix:PATH)")


class Ovsdb:
    """A connection to ovsdb-server's ``Open_vSwitch`` database."""

    def __init__(self, db: str, *, timeout: float = 30.0):
        self._rpc = JsonRpcClient(socket_path(db), timeout=timeout, error=OvsdbError)

    def close(self) -> None:
        """Close the connection."""
        self._rpc.close()

    def __enter__(self) -> Ovsdb:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def transact(self, *ops: dict[str, Any]) -> list[Any]:
        """Run one transaction; raise OvsdbError if any operation failed."""
        result = self._rpc.call("transact", [DB, *ops])
        if not isinstance(result, list):
            raise OvsdbError("transact: malformed reply")
        for op, res in zip(ops, result, strict=False):
            if isinstance(res, dict) and res.get("error"):
                raise OvsdbError(f"{op.get('op')} {op.get('table')}: {res['error']}: "
                                 f"{res.get('details', '')}")
        return result

    def select(self, table: str, columns: list[str], where: list[Any] | None = None
               ) -> list[dict[str, Any]]:
        """Rows of *table* (only *columns*, plus ``_uuid``), values decoded to Python."""
        op = {"op": "select", "table": table, "where": where or [],
              "columns": ["_uuid", *columns]}
        rows = self.transact(op)[0].get("rows", [])
        return [{k: decode(v) for k, v in row.items()} for row in rows]

    def schema_version(self) -> str:
        """The version of the database's schema, e.g. ``8.3.1``."""
        schema = self._rpc.call("get_schema", [DB])
        if not isinstance(schema, dict) or not isinstance(schema.get("version"), str):
            raise OvsdbError("get_schema: malformed reply")
        return str(schema["version"])

    def set_ovs_version(self, version: str) -> None:
        """Record the running vswitchd's version, as ``ovs-ctl`` does at start."""
        self.transact({"op": "update", "table": "Open_vSwitch", "where": [],
                       "row": {"ovs_version": version}})

    def set_other_config(self, key: str, value: str | None) -> None:
        """Set (or with None, remove) one ``other_config`` key of the ``Open_vSwitch`` row."""
        ops: list[dict[str, Any]] = [
            {"op": "mutate", "table": "Open_vSwitch", "where": [],
             "mutations": [["other_config", "delete", ["set", [key]]]]},
        ]
        if value is not None:
            ops.append({"op": "mutate", "table": "Open_vSwitch", "where": [],
                        "mutations": [["other_config", "insert", ["map", [[key, value]]]]]})
        self.transact(*ops)

    def set_flow_restore_wait(self, on: bool) -> None:
        """Set or remove ``other_config:flow-restore-wait``, with ovsndu's mark
        (``external_ids:{FRW_MARK}``) in the same transaction: ovsndu lifts only what it set."""
        ops: list[dict[str, Any]] = [
            {"op": "mutate", "table": "Open_vSwitch", "where": [],
             "mutations": [["other_config", "delete", ["set", ["flow-restore-wait"]]],
                           ["external_ids", "delete", ["set", [FRW_MARK]]]]},
        ]
        if on:
            ops.append({"op": "mutate", "table": "Open_vSwitch", "where": [],
                        "mutations": [["other_config", "insert",
                                       ["map", [["flow-restore-wait", "true"]]]],
                                      ["external_ids", "insert",
                                       ["map", [[FRW_MARK, "true"]]]]]})
        self.transact(*ops)

    def flow_restore_wait(self) -> tuple[bool, bool]:
        """Whether flow-restore-wait is set, and whether ovsndu set it."""
        (row,) = self.select("Open_vSwitch", ["other_config", "external_ids"])
        on = row["other_config"].get("flow-restore-wait") == "true"
        return on, on and row["external_ids"].get(FRW_MARK) == "true"


FRW_MARK = "ovsndu-set-flow-restore-wait"


def decode(value: Any) -> Any:
    """OVSDB wire values → Python: ``["uuid", u]`` → u, sets → lists, maps → dicts."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        tag, body = value
        if tag in ("uuid", "named-uuid"):
            return body
        if tag == "set":
            return [decode(v) for v in body]
        if tag == "map":
            return {decode(k): decode(v) for k, v in body}
    return value
