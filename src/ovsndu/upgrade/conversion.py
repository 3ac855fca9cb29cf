"""The database schema step of an upgrade: plan in preflight, convert online, convert back.

* :meth:`SchemaStep.plan` (preflight, nothing changes): the schema the target binary
  needs (:func:`target_schema_file`), the database's, and what ``_Server`` advertises;
  a downgrade that would drop values is refused naming table and column unless
  ``[upgrade] allow_schema_loss`` is set (then the loss is an anomaly).
* :meth:`SchemaStep.apply` (before the snapshot): backup, ``ovsdb-client convert``,
  ``_Server`` refreshed, the serving vswitchd connected again.  It keeps forwarding
  throughout; only its OVSDB session is cut and re-made.
* :meth:`SchemaStep.revert` (rollback): the same back to the original schema.

Everything is written into the record's ``schema`` field.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ovsndu.errors import OvsdbError, OvsnduError, VswitchdError
from ovsndu.ovs import dbschema
from ovsndu.ovs.schema import Schema, direction, lost_values

log = structlog.get_logger("ovsndu.upgrade")

RECONNECT_TIMEOUT = 30.0
_LACKS = re.compile(r"(\w+) table in \S+ database lacks (\S+) column|database lacks (\S+) table")


def target_schema_file(binary: str, *, configured_binary: str, configured_schema: str,
                       override: str = "") -> Path | None:
    """The schema file *binary* needs: the request's, the configured one for the
    configured binary, else the one its installation ships beside it (None: unknown)."""
    if override:
        return Path(override)
    if configured_schema and Path(binary).resolve() == Path(configured_binary).resolve():
        return Path(configured_schema)
    return dbschema.schema_beside(binary)


@dataclass
class SchemaStep:
    """One upgrade's schema work on database *db* served from *rundir*."""

    rundir: Path
    db: str
    work: Path  # the upgrade's private directory (original schema kept there)
    backup_dir: Path  # backups outlive the upgrade
    upgrade_id: str
    allow_loss: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    _live: Schema | None = None
    _live_raw: dict[str, Any] | None = None
    _target_file: Path | None = None
    _converted: bool = False
    _log_offset: int = 0

    # --- preflight ---------------------------------------------------------------------
    def plan(self, target_file: Path | None) -> None:
        """Learn the three schemas; refuse (VswitchdError) a lossy downgrade."""
        live, raw = dbschema.live_schema(self.db)
        self._live, self._live_raw = live, raw
        advertised = dbschema.advertised_version(self.db)
        self.record.update(database=live.version, advertised=advertised)
        if target_file is None:
            self.record.update(target="", action="none (the target's schema is unknown: "
                               "set [ovs] schema or pass --schema)")
            return
        try:
            target, _raw = dbschema.read_schema_file(target_file)
        except OvsdbError as exc:
            raise VswitchdError(f"the target's schema: {exc}") from None
        way = direction(live, target)
        self._target_file = target_file
        self.record.update(target=target.version, target_file=str(target_file), direction=way)
        if way == "downgrade":
            lost = lost_values(live, target, dbschema.values_in(self.db, live, target))
            if lost:
                what = ", ".join(lost)
                if not self.allow_loss:
                    raise VswitchdError(
                        f"downgrading the database schema {live.version} → {target.version} "
                        f"would drop values in {what}; clear them first, or set "
                        f"[upgrade] allow_schema_loss = true to accept the loss")
                self.anomalies.append(f"schema downgrade {live.version} → {target.version} "
                                      f"dropped values in {what} (allow_schema_loss)")
                self.record["lost"] = lost
        if way != "same":
            self.record["action"] = "convert"
        elif advertised != live.version:
            self.record["action"] = "refresh _Server"
        else:
            self.record["action"] = "none"

    @property
    def needed(self) -> bool:
        """Whether :meth:`apply` changes anything."""
        return self.record.get("action") in ("convert", "refresh _Server")

    # --- before the snapshot -----------------------------------------------------------
    def apply(self, serving_pid: int) -> None:
        """Backup, convert, refresh ``_Server``, wait for the serving vswitchd."""
        if not self.needed:
            return
        assert self._live_raw is not None and self._live is not None
        self.work.mkdir(mode=0o700, parents=True, exist_ok=True)
        original = self.work / "original.ovsschema"
        original.write_text(json.dumps(self._live_raw))
        server = dbschema.OvsdbServer.find(self.rundir)
        convert: Callable[[], None] | None = None
        if self.record["action"] == "convert":
            target = self._target_file
            assert target is not None
            name = f"{self.upgrade_id}-{self._live.version}.db"
            self.record["backup"] = str(dbschema.backup(self.db, self.backup_dir / name))

            def convert() -> None:
                t0 = time.monotonic()
                dbschema.convert(self.db, target)
                self._converted = True
                self.record["convert_ms"] = round((time.monotonic() - t0) * 1000, 2)

            if self.record.get("direction") != "downgrade":
                convert()  # an upgrade: connected clients keep working meanwhile
                convert = None
                self._settle(serving_pid)
        self._refresh(server, serving_pid, convert)
        self.record["converted"] = self._converted
        now = dbschema.live_schema(self.db)[0].version
        advertised = dbschema.advertised_version(self.db)
        if now != self.record["target"] and self._converted:
            raise VswitchdError(f"the database has schema {now} after converting to "
                                f"{self.record['target']}")
        if advertised != now:
            raise VswitchdError(f"_Server still advertises {advertised}, the database has {now}")
        log.info("upgrade.schema_converted", upgrade_id=self.upgrade_id, phase="snapshot",
                 event_kind="schema", **{k: v for k, v in self.record.items() if k != "lost"})

    def _settle(self, serving_pid: int | None) -> None:
        """After an unpaused conversion the serving vswitchd re-reads ``_Server`` and
        monitors again: wait until it is done, so that no request of it is in flight
        when the database is removed and added (it would find none and back off 1 s)."""
        if serving_pid:
            took = dbschema.wait_vswitchd_caught_up(self.db, RECONNECT_TIMEOUT)
            self.record["settle_ms"] = round(took * 1000, 2)

    def _refresh(self, server: dbschema.OvsdbServer, serving_pid: int | None,
                 before: Callable[[], None] | None = None) -> None:
        pause = (serving_pid,) if serving_pid else ()
        self.record["refresh_ms"] = round(server.refresh(pause, before) * 1000, 2)
        if serving_pid:
            took = dbschema.wait_vswitchd_caught_up(self.db, RECONNECT_TIMEOUT)
            self.record["reconnect_ms"] = round(took * 1000, 2)

    # --- after the handover ------------------------------------------------------------
    def mark_log(self, log_file: Path) -> None:
        """Remember where vswitchd's log ends before the new vswitchd starts."""
        try:
            self._log_offset = log_file.stat().st_size
        except OSError:
            self._log_offset = 0

    def check_log(self, log_file: Path) -> None:
        """Columns the new vswitchd found missing (its schema is newer than the database's)
        become anomalies: inert columns are never silent."""
        try:
            with open(log_file, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return
        lacks = sorted({f"{m[1]}.{m[2]}" if m[1] else f"{m[3]} (table)"
                        for m in _LACKS.finditer(text)})
        if lacks:
            self.anomalies.append(
                f"the new vswitchd needs a newer database schema than {self.record.get('database')}"
                f" (inert: {', '.join(lacks)}); give its schema file (--schema or [ovs] schema) "
                f"and reload again")
            self.record["lacks"] = lacks

    # --- rollback ----------------------------------------------------------------------
    def revert(self, serving_pid: int | None) -> None:
        """Convert back to the original schema (if converted) and refresh ``_Server``;
        *serving_pid*: the vswitchd that serves meanwhile (None: none runs)."""
        if not self._converted:
            return  # a refresh alone changed nothing to undo
        original = self.work / "original.ovsschema"

        def convert_back() -> None:
            dbschema.convert(self.db, original)
            self._converted = False

        server = dbschema.OvsdbServer.find(self.rundir)
        if self.record.get("direction") == "downgrade":
            convert_back()  # back up to a newer schema: clients keep working meanwhile
            self._settle(serving_pid)
            self._refresh(server, serving_pid)
        else:
            self._refresh(server, serving_pid, convert_back)
        self.record["reverted"] = True
        log.warning("upgrade.schema_reverted", upgrade_id=self.upgrade_id, phase="rollback",
                    event_kind="schema", database=self.record.get("database"))


def revert_recorded(schema: dict[str, Any], rundir: Path, db: str, work: Path,
                    serving_pid: int | None) -> list[str]:
    """After a supervisor crash: convert back what an in-flight upgrade converted.

    *schema* is the in-flight record's ``schema`` field, *work* its work directory (the
    original schema was saved there before converting).  Returns anomalies to record.
    """
    if not schema.get("converted") or schema.get("reverted"):
        return []
    original = work / "original.ovsschema"
    try:
        pause = (serving_pid,) if serving_pid else ()
        dbschema.OvsdbServer.find(rundir).refresh(
            pause, lambda: dbschema.convert(db, original))
        if serving_pid:
            dbschema.wait_vswitchd_caught_up(db, RECONNECT_TIMEOUT)
    except OvsnduError as exc:
        return [f"the database stays converted to {schema.get('target')}: converting back "
                f"to {schema.get('database')} failed: {exc} (backup: {schema.get('backup')})"]
    schema["reverted"] = True
    return [f"database converted back to {schema.get('database')} after the supervisor crash"]
