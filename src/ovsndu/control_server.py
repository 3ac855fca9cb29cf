"""The supervisor's control socket, server side: requests checked, run and answered.

One connection carries one JSON object (``op``: ``status``, ``reload``, ``reexec``,
``release``); the answer is JSON lines, the last one the result.  Bad input (not an
object, too deep, a bad ``timeout`` or ``vswitchd``) gets a one-line refusal with exit
code 2, an unexpected error a one-line ``internal error`` with exit code 3: never a
silent hang-up.  A reload streams its phase events and ends with the record.  Functions
of a :class:`~ovsndu.supervisor.Supervisor`, whose attributes they update.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from typing import TYPE_CHECKING, Any

import structlog

from ovsndu.config import reread
from ovsndu.errors import ConfigError
from ovsndu.systemd import notify as sdnotify
from ovsndu.upgrade.machine import EXIT_REFUSED
from ovsndu.upgrade.runner import UpgradeRunner
from ovsndu.upgrade.serving import Serving

if TYPE_CHECKING:
    from ovsndu.supervisor import Supervisor

log = structlog.get_logger("ovsndu.supervisor")
MAX_TIMEOUT = 86400.0
"""The longest ``timeout`` a reload may ask for (seconds)."""


async def handle(sup: Supervisor, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
    """One connection: one JSON request, answered in JSON lines (a refusal on one line)."""
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        try:
            request = json.loads(line or b"{}")
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if not isinstance(request, dict):
            raise ValueError(f"a request is a JSON object, not {type(request).__name__}")
        op = request.get("op")
        if op == "status":
            await _send(writer, {"event": "status", **sup.status()})
        elif op == "reload":
            await reload(sup, request, writer)
        elif op == "reexec":
            await reexec(sup, writer)
        elif op == "release":
            await release(sup, writer)
        else:
            await _send(writer, _refusal(f"unknown op {op!r}"))
    except (ValueError, TimeoutError, ConnectionError) as exc:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await _send(writer, _refusal(f"bad request: {str(exc)[:200]}"))
    except Exception as exc:  # never a silent hang-up: the caller gets a line
        log.error("supervisor.control_error", event_kind="anomaly", reason=repr(exc))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await _send(writer, {"event": "error", "outcome": "failed", "exit_code": 3,
                                 "reason": f"internal error: {exc!r}"})
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def reload(sup: Supervisor, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
    """Re-read the configuration, check the request, run the upgrade (its phase events
    streamed) and answer with its record; refused at once while another one runs."""
    if sup.runner is not None:
        await _send(
            writer,
            {
                "event": "result",
                "outcome": "refused",
                "exit_code": EXIT_REFUSED,
                "reason": f"busy: upgrade {sup.runner.upgrade_id} is in phase {sup.phase}",
            },
        )
        return
    assert sup.serving is not None
    try:  # a reload reads the whole configuration again
        sup.cfg = reread(sup.cfg)
    except ConfigError as exc:
        await _send(writer, {"event": "result", "outcome": "refused",
                             "exit_code": EXIT_REFUSED, "reason": str(exc)})
        return
    timeout = reload_timeout(request.get("timeout"), sup.cfg.upgrade.timeout)
    binary = request.get("vswitchd") or sup.cfg.ovs.vswitchd
    if not isinstance(binary, str):
        raise ValueError(f"vswitchd must be a path, not {type(binary).__name__}")

    def progress(event: dict[str, Any]) -> None:
        if event.get("event") == "phase":
            sup.phase = str(event["phase"])
            if sup.bus is not None:
                sup.bus.changed()
            sdnotify.notify(STATUS=sup.status_line(), EXTEND_TIMEOUT_USEC=int(timeout * 1e6))
        with contextlib.suppress(Exception):
            writer.write(json.dumps(event).encode() + b"\n")

    def moved(serving: Serving) -> None:
        sup.serving = serving
        sup.announce()

    runner = UpgradeRunner(
        sup.cfg,
        sup.serving,
        sup.store,
        new_binary=binary,
        timeout=timeout,
        schema=str(request.get("schema") or ""),
        progress=progress,
        on_serving=moved,
        on_snapshot=sup.keeper.adopt,
        known=sup.keeper.known(),
    )
    sup.runner = runner
    sdnotify.notify(RELOADING=1, STATUS=f"upgrading to {binary}")
    task = sup.runner_task = asyncio.create_task(runner.run())
    task.add_done_callback(sup.upgrade_done)
    try:
        record = await asyncio.shield(task)
    except Exception as exc:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await _send(writer, {"event": "result", "outcome": "failed", "exit_code": 3,
                                 "reason": f"internal error: {exc!r} (see the journal)"})
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        await _send(
            writer,
            {
                "event": "result",
                "outcome": record.outcome,
                "exit_code": record.exit_code,
                "reason": record.reason,
                "record": record.to_dict(),
            },
        )


async def reexec(sup: Supervisor, writer: asyncio.StreamWriter) -> None:
    """Replace this process's image by the installed ovsndu; vswitchd is not touched."""
    if sup.runner is not None:
        await _send(writer, _refusal(f"busy: upgrade {sup.runner.upgrade_id} is in "
                                     f"phase {sup.phase}"))
        return
    s = sup.serving
    await _send(writer, {"event": "result", "outcome": "reexec", "exit_code": 0,
                         "supervisor_pid": os.getpid(),
                         "supervisor_instance": sup.instance,
                         "vswitchd_pid": s.pid if s else None,
                         "reason": "re-executing the installed ovsndu"})
    sup.reexec = True
    sup.stopping.set()


async def release(sup: Supervisor, writer: asyncio.StreamWriter) -> None:
    """Hand the running vswitchd to the unit (``uninstall-systemd``) and exit.

    systemd learns that vswitchd is the main process now (MAINPID=), so once the
    stock unit is back its ExecStop (ovs-ctl stop) stops the switch; we leave it
    running and exit without being the main process any more.
    """
    s = sup.serving
    if sup.runner is not None or s is None:
        why = f"busy: upgrade {sup.runner.upgrade_id}" if sup.runner else "no vswitchd"
        await _send(writer, _refusal(why))
        return
    # Processed before we exit (else systemd would see its main process end first).
    told = sdnotify.notify(MAINPID=s.pid, STATUS=f"handed over to ovs-vswitchd pid {s.pid}")
    told = told and await asyncio.to_thread(sdnotify.barrier)
    if not told:
        await _send(writer, _refusal("systemd did not confirm ovs-vswitchd as the unit's "
                                     "main process; the supervisor stays"))
        return
    await _send(writer, {"event": "result", "outcome": "released", "exit_code": 0,
                         "supervisor_pid": os.getpid(), "vswitchd_pid": s.pid,
                         "systemd_told": told,
                         "reason": f"ovs-vswitchd pid {s.pid} keeps running"})
    log.info("supervisor.released", event_kind="released", vswitchd_pid=s.pid)
    sup.released = True
    sup.stopping.set()


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


def _refusal(reason: str) -> dict[str, Any]:
    """The answer to a request refused before anything changed."""
    return {"event": "error", "outcome": "refused", "exit_code": EXIT_REFUSED,
            "reason": reason}


def reload_timeout(raw: object, default: float) -> float:
    """A reload's ``timeout``: absent means *default*; else a finite number of seconds in
    (0, MAX_TIMEOUT].  ValueError (one line) otherwise."""
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"timeout must be a number of seconds, not {type(raw).__name__}")
    if not math.isfinite(raw) or not 0 < raw <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} s, "
                         f"not {raw!r}")
    return float(raw)


