"""What the new binary said during an upgrade, in the record and in one journal entry.

The rehearsal vswitchd (in the client's sandbox) and the standby (on the live database)
log to their files only, never to the unit's journal (a standby waiting on the OVSDB
lock logs an ERR line on every healthy upgrade).  When an upgrade finishes,
:func:`attach` (the history store's finishing hook) puts into the record's
``vswitchd_logs``:

* ``rehearsal`` — the summary the client wrote before its sandbox was removed
  (:data:`REHEARSAL_LOG`): counts by level, WARN/ERR lines verbatim, stderr's last lines;
* ``standby`` — the live ``ovs-vswitchd.log`` from the standby phase's start to the end
  (the standby's lines, then the promoted process's; the old vswitchd, idle then, writes
  the same file), the standby's stderr's last lines, and how it ended (set by the
  rollback, which kills it).

It logs one ``upgrade.vswitchd_logs`` entry (INFO, with the upgrade's id).  When the
upgrade failed in the standby or handover and the reason does not yet say how the new
vswitchd ended, its exit status and last words are added to the reason (the one-line
error the caller sees).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from ovsndu.ovs import vlog
from ovsndu.upgrade.history import UpgradeRecord

log = structlog.get_logger("ovsndu.upgrade")

REHEARSAL_LOG = "rehearsal-log.json"
"""The client's summary of the rehearsal vswitchd's log, in the upgrade's work directory."""
STANDBY_STDERR = "standby.stderr"
"""The standby's stderr, in the upgrade's work directory."""
_NEW_BINARY_PHASES = ("standby", "handover")


def attach(record: UpgradeRecord, workdir: Path, live_log: Path) -> None:
    """Fill ``record.vswitchd_logs``, complete the reason, log one journal entry."""
    logs = record.vswitchd_logs
    rehearsal = _read_json(workdir / REHEARSAL_LOG)
    if rehearsal is not None:
        logs["rehearsal"] = rehearsal
    started = _phase_start(record, "standby")
    if started is not None and record.standby_pid is not None:
        standby = logs.setdefault("standby", {})
        summary = vlog.summarise(live_log, since=started)
        summary["since"] = started
        summary["stderr"] = vlog.tail(workdir / STANDBY_STDERR)
        standby.update(summary)
        _complete_reason(record, standby)
    if not logs:
        return
    log.info("upgrade.vswitchd_logs", upgrade_id=record.id, event_kind="vswitchd_logs",
             **{f"{name}": _entry(summary) for name, summary in logs.items()})


def _entry(summary: dict[str, Any]) -> str:
    """One process's summary for the journal: counts, exit, WARN/ERR lines, bounded."""
    parts = [vlog.one_line(summary)]
    if summary.get("exit"):
        parts.append(f"ended: {summary['exit']}")
    lines = [ln.split("|", 4)[-1] for ln in summary.get("lines", [])[:5]]
    parts += lines
    if summary.get("stderr"):
        parts.append("stderr: " + " | ".join(summary["stderr"][-2:]))
    return "; ".join(parts)


def _complete_reason(record: UpgradeRecord, standby: dict[str, Any]) -> None:
    """A failed standby/handover: the reason names how the new vswitchd ended and what it
    said last, if it does not already."""
    if record.outcome == "committed" or not any(
            record.reason.startswith(f"{phase} failed") or f"during {phase}" in record.reason
            for phase in _NEW_BINARY_PHASES):
        return
    extra = []
    ended = standby.get("exit")
    if ended and ended.split(",")[0] not in record.reason:
        extra.append(f"the new vswitchd: {ended}")
    said = standby.get("stderr") or []
    if said and said[-1] not in record.reason:
        extra.append("its stderr: " + " | ".join(said[-3:]))
    elif not said and standby.get("lines"):
        last = standby["lines"][-1].split("|", 4)[-1]
        if last not in record.reason:
            extra.append(f"its log: {last}")
    if extra:
        record.reason = f"{record.reason} ({'; '.join(extra)})"[:1000]


def _phase_start(record: UpgradeRecord, phase: str) -> str | None:
    """When *phase* started, as OVS prints log times (``YYYY-MM-DDTHH:MM:SS.mmm``, UTC)."""
    for entry in record.phases:
        if entry.phase == phase:
            return entry.started[:23]
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
