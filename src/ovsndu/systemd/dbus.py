"""The supervisor on the D-Bus system bus, and the unit's state from systemd.

The supervisor owns :data:`BUS_NAME` and exports one object, :data:`OBJECT_PATH`, with
the interface :data:`INTERFACE`:

* read-only properties ``Phase`` (s), ``LastOutcome`` (s, ``""`` before the first
  upgrade), ``UpgradeId`` (s, ``""`` when none runs), ``VswitchdPid`` (u) and
  ``Version`` (s), with ``org.freedesktop.DBus.Properties.PropertiesChanged`` whenever
  one of them changes;
* ``Reload(s binary) -> (i exit_code, s outcome, s reason)``: a live upgrade to
  *binary* (``""``: the configured one), answered when it has ended, with the exit
  codes of ``ovsndu reload``.  It goes through the control socket, like the CLI, so
  there is one way into an upgrade.

Without a system bus (or without the policy file that lets the supervisor own the
name) the supervisor logs it once and carries on: the bus is an extra window onto it,
never a dependency.  :func:`unit_state` is the client side for ``ovsndu status``:
``ActiveState`` and ``MainPID`` of the unit from ``org.freedesktop.systemd1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any, Protocol

import structlog
from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.constants import NameFlag, PropertyAccess, RequestNameReply
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property


class Supervisor(Protocol):
    """What this module reads of the supervisor (structural: no import of it, no circle)."""

    cfg: Any
    phase: Any
    runner: Any
    store: Any
    serving: Any

log = structlog.get_logger("ovsndu.dbus")

BUS_NAME = "org.ovsndu.Supervisor1"
OBJECT_PATH = "/org/ovsndu/Supervisor1"
INTERFACE = "org.ovsndu.Supervisor1"
UNIT = "ovs-vswitchd.service"
CONNECT_TIMEOUT = 5.0
REFRESH_INTERVAL = 1.0
"""Seconds between checks for changes nobody announced (e.g. a restarted vswitchd)."""

ReloadResult = Annotated[tuple[int, str, str], DBusSignature("iss")]


def properties_of(sup: Supervisor) -> dict[str, Any]:
    """The exported property values, read from the supervisor."""
    s = sup.serving
    last = sup.store.last()
    return {
        "Phase": str(sup.phase),
        "LastOutcome": (last.outcome or "") if last is not None else "",
        "UpgradeId": sup.runner.upgrade_id if sup.runner is not None else "",
        "VswitchdPid": s.pid if s is not None else 0,
        "Version": (s.version or "") if s is not None else "",
    }


class SupervisorInterface(ServiceInterface):
    """``org.ovsndu.Supervisor1`` (the values are cached; :meth:`refresh` updates them)."""

    def __init__(self, sup: Supervisor) -> None:
        super().__init__(INTERFACE)
        self._sup = sup
        self.values = properties_of(sup)

    def refresh(self) -> dict[str, Any]:
        """Re-read the supervisor; emit PropertiesChanged for what changed; return that."""
        try:
            new = properties_of(self._sup)
        except Exception as exc:  # the history store is being written; next time
            log.debug("dbus.refresh_failed", reason=str(exc))
            return {}
        changed = {k: v for k, v in new.items() if self.values.get(k) != v}
        self.values = new
        if changed:
            self.emit_properties_changed(changed)
        return changed

    @dbus_property(access=PropertyAccess.READ)
    def Phase(self) -> DBusStr:  # D-Bus member names are CamelCase
        return str(self.values["Phase"])

    @dbus_property(access=PropertyAccess.READ)
    def LastOutcome(self) -> DBusStr:
        return str(self.values["LastOutcome"])

    @dbus_property(access=PropertyAccess.READ)
    def UpgradeId(self) -> DBusStr:
        return str(self.values["UpgradeId"])

    @dbus_property(access=PropertyAccess.READ)
    def VswitchdPid(self) -> DBusUInt32:
        return int(self.values["VswitchdPid"])

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return str(self.values["Version"])

    @dbus_method()
    async def Reload(self, binary: DBusStr) -> ReloadResult:
        result = await control_reload(self._sup.cfg.ovsndu.control_socket, binary or None)
        code = result.get("exit_code")
        return (
            code if isinstance(code, int) else 3,
            str(result.get("outcome") or "failed"),
            str(result.get("reason") or ""),
        )


async def control_reload(path: str, binary: str | None) -> dict[str, Any]:
    """Ask the supervisor's control socket for a reload; the final answer."""
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
    except OSError as exc:
        raise DBusError("org.ovsndu.Supervisor1.Error.Unreachable", str(exc)) from None
    try:
        writer.write(json.dumps({"op": "reload", "vswitchd": binary}).encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            answer: dict[str, Any] = json.loads(line)
            if answer.get("event") in ("result", "error"):
                return answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    raise DBusError("org.ovsndu.Supervisor1.Error.Failed", "the supervisor closed the connection")


class DbusService:
    """The supervisor's presence on the system bus; every failure is logged, never raised."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.interface = SupervisorInterface(sup)
        self.bus: MessageBus | None = None
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, sup: Supervisor, bus_address: str | None = None) -> DbusService:
        """Connect, export and own the name; without a bus, log once and return anyway."""
        self = cls(sup)
        try:
            await asyncio.wait_for(self._connect(bus_address), CONNECT_TIMEOUT)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("dbus.unavailable", event_kind="anomaly", bus_name=BUS_NAME,
                        reason=f"no D-Bus service: {reason}")
            await self._disconnect()
        self._refresher = asyncio.create_task(self._refresh_loop())
        return self

    async def _connect(self, bus_address: str | None) -> None:
        bus = (MessageBus(bus_address=bus_address) if bus_address
               else MessageBus(bus_type=BusType.SYSTEM))
        self.bus = bus
        await bus.connect()
        bus.export(OBJECT_PATH, self.interface)
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise RuntimeError(f"{BUS_NAME} is owned by another process")
        log.info("dbus.ready", event_kind="dbus_ready", bus_name=BUS_NAME, path=OBJECT_PATH)

    @property
    def connected(self) -> bool:
        """Whether the name is owned on a live connection."""
        return self.bus is not None and self.bus.connected

    def changed(self) -> None:
        """The supervisor's phase or vswitchd changed: announce it (no-op without a bus)."""
        self.interface.refresh()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            self.interface.refresh()

    async def _disconnect(self) -> None:
        bus, self.bus = self.bus, None
        if bus is not None:
            with contextlib.suppress(Exception):
                bus.disconnect()
                await asyncio.wait_for(bus.wait_for_disconnect(), 2)  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        """Release the name and disconnect."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._disconnect()


# --- the client side: the unit as systemd sees it --------------------------------------------
async def _unit_state(unit: str) -> dict[str, Any]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        async def call(path: str, interface: str, member: str, signature: str,
                       body: list[Any]) -> list[Any]:
            reply = await bus.call(Message(
                destination="org.freedesktop.systemd1", path=path, interface=interface,
                member=member, signature=signature, body=body))
            if reply is None or reply.message_type == MessageType.ERROR:
                why = reply.body[0] if reply is not None and reply.body else "no reply"
                name = (reply.error_name if reply else None) or "org.freedesktop.DBus.Error.Failed"
                raise DBusError(name, str(why))
            return list(reply.body)

        (path,) = await call("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                             "LoadUnit", "s", [unit])
        props = "org.freedesktop.DBus.Properties"
        state: list[Variant] = await call(path, props, "Get", "ss",
                                          ["org.freedesktop.systemd1.Unit", "ActiveState"])
        sub: list[Variant] = await call(path, props, "Get", "ss",
                                        ["org.freedesktop.systemd1.Unit", "SubState"])
        pid: list[Variant] = await call(path, props, "Get", "ss",
                                        ["org.freedesktop.systemd1.Service", "MainPID"])
        return {"unit": unit, "active_state": state[0].value, "sub_state": sub[0].value,
                "main_pid": int(pid[0].value)}
    finally:
        bus.disconnect()


def unit_state(unit: str = UNIT, timeout: float = 3.0) -> dict[str, Any] | None:
    """``ActiveState``/``SubState``/``MainPID`` of *unit*; ``None`` without systemd's bus."""
    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(_unit_state(unit), timeout)

    try:
        return asyncio.run(bounded())
    except Exception:
        return None
