"""The supervisor's D-Bus object on a private dbus-daemon, and life without a bus."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from dbus_fast import BusType, Message, Variant
from dbus_fast.aio import MessageBus

from ovsndu.config import Config
from ovsndu.systemd import dbus as dbus_service


class FakeStore:
    def __init__(self) -> None:
        self.outcome: str | None = None

    def last(self) -> Any:
        return SimpleNamespace(outcome=self.outcome) if self.outcome else None


def fake_supervisor(control_socket: str) -> Any:
    cfg = Config.from_dict({"ovsndu": {"control_socket": control_socket}})
    return SimpleNamespace(cfg=cfg, phase="idle", runner=None, store=FakeStore(),
                           serving=SimpleNamespace(pid=42, version="ovs-vswitchd 3.1.0"))


@pytest.fixture(name="bus_address")
def _bus_address(tmp_path: Path) -> Iterator[str]:
    if shutil.which("dbus-daemon") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and this test needs dbus-daemon (scripts/setup installs dbus)")
        pytest.skip("needs dbus-daemon (apt install dbus); CI is unset, so skipping")
    address = f"unix:path={tmp_path}/bus"
    proc = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile",
                             f"--address={address}", "--print-address"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # ready once it prints its address
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


async def _get(bus: MessageBus, name: str) -> Any:
    reply = await bus.call(Message(
        destination=dbus_service.BUS_NAME, path=dbus_service.OBJECT_PATH,
        interface="org.freedesktop.DBus.Properties", member="Get", signature="ss",
        body=[dbus_service.INTERFACE, name]))
    assert reply is not None and reply.body, reply
    value: Variant = reply.body[0]
    return value.value


def test_properties_changes_and_reload(bus_address: str, tmp_path: Path) -> None:
    control = str(tmp_path / "control.sock")
    sup = fake_supervisor(control)

    async def fake_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        writer.write(json.dumps({"event": "phase", "phase": "preflight"}).encode() + b"\n")
        writer.write(json.dumps({"event": "result", "outcome": "rolled_back", "exit_code": 1,
                                 "reason": f"no {request['vswitchd']}"}).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_unix_server(fake_control, path=control)
        service = await dbus_service.DbusService.start(sup, bus_address)
        assert service.connected
        client = await MessageBus(bus_address=bus_address).connect()
        seen: list[dict[str, Any]] = []

        def on_message(msg: Message) -> None:
            if msg.member == "PropertiesChanged":
                seen.append({k: v.value for k, v in msg.body[1].items()})

        client.add_message_handler(on_message)
        await client.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s",
            body=["type='signal',interface='org.freedesktop.DBus.Properties'"]))
        assert await _get(client, "Phase") == "idle"
        assert await _get(client, "VswitchdPid") == 42
        assert await _get(client, "LastOutcome") == ""
        sup.phase = "handover"
        service.changed()
        sup.phase, sup.store.outcome = "idle", "committed"
        service.changed()
        service.changed()  # nothing changed: no signal
        reply = await client.call(Message(
            destination=dbus_service.BUS_NAME, path=dbus_service.OBJECT_PATH,
            interface=dbus_service.INTERFACE, member="Reload", signature="s", body=["/x"]))
        assert reply is not None and reply.body == [1, "rolled_back", "no /x"], reply
        assert seen == [{"Phase": "handover"}, {"Phase": "idle", "LastOutcome": "committed"}]
        client.disconnect()
        await service.stop()
        assert not service.connected
        server.close()

    asyncio.run(scenario())


def test_without_a_bus_logs_once_and_carries_on(tmp_path: Path) -> None:
    sup = fake_supervisor(str(tmp_path / "control.sock"))

    async def scenario() -> None:
        with structlog.testing.capture_logs() as logs:
            service = await dbus_service.DbusService.start(sup, f"unix:path={tmp_path}/none")
            service.changed()
            await service.stop()
        assert not service.connected
        assert [e["event"] for e in logs] == ["dbus.unavailable"]
        assert logs[0]["event_kind"] == "anomaly"

    asyncio.run(scenario())


def test_unit_state_without_systemd_is_none(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/none")
    assert dbus_service.unit_state(timeout=1) is None
    assert BusType.SYSTEM  # the system bus is what unit_state asks
