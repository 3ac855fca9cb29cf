"""sd_notify over a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.systemd.notify import format_fields, notify, watchdog_interval


@pytest.fixture(name="systemd")
def _systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket, advertised as $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    with sock:
        yield sock


def _fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().splitlines()


class TestNotify:
    def test_without_socket_is_a_no_op(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Not under systemd: nothing is sent and False is returned."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        assert notify(ready=True) is False

    def test_fields(self, systemd: socket.socket) -> None:
        """Each keyword becomes one KEY=value line; True is 1, False and None are left out."""
        assert notify(ready=True, status="serving 3.1.1", mainpid=42, stopping=False, errno=None)
        assert _fields(systemd) == ["READY=1", "STATUS=serving 3.1.1", "MAINPID=42"]

    def test_reloading_carries_monotonic_usec(self, systemd: socket.socket) -> None:
        """RELOADING=1 comes with MONOTONIC_USEC for systemd's notify-reload."""
        assert notify(reloading=True)
        lines = _fields(systemd)
        assert lines[0] == "RELOADING=1"
        assert lines[1].startswith("MONOTONIC_USEC=")
        assert int(lines[1].split("=")[1]) > 0

    def test_upper_case_names(self, systemd: socket.socket) -> None:
        """Keys may be spelled as systemd spells them."""
        assert notify(RELOADING=1, STATUS="upgrading")
        lines = _fields(systemd)
        assert lines[:2] == ["RELOADING=1", "STATUS=upgrading"]
        assert lines[2].startswith("MONOTONIC_USEC=")

    def test_watchdog_and_extend_timeout(self, systemd: socket.socket) -> None:
        """WATCHDOG=1 and EXTEND_TIMEOUT_USEC are plain fields."""
        assert notify(watchdog=True, extend_timeout_usec=30_000_000)
        assert _fields(systemd) == ["WATCHDOG=1", "EXTEND_TIMEOUT_USEC=30000000"]

    def test_newlines_cannot_inject_fields(self, systemd: socket.socket) -> None:
        """A newline in a status becomes a space, so it cannot add READY=1."""
        assert notify(status="phase\nREADY=1")
        assert _fields(systemd) == ["STATUS=phase READY=1"]

    def test_abstract_socket(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An address starting with @ is in the abstract namespace."""
        name = f"ovsndu-test-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            sock.settimeout(2)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            assert notify(stopping=True)
            assert _fields(sock) == ["STOPPING=1"]

    def test_vanished_socket_returns_false(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A send failure is reported as False, never raised."""
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
        assert notify(ready=True) is False

    def test_reconnects_each_call(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A socket re-created between calls still receives (no cached connection)."""
        path = tmp_path / "notify"
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        for status in ("one", "two"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(str(path))
                sock.settimeout(2)
                assert notify(status=status)
                assert _fields(sock) == [f"STATUS={status}"]
            path.unlink()

    def test_bad_field_name(self) -> None:
        """A name that cannot be a field is a programming error."""
        with pytest.raises(ValueError, match="field name"):
            format_fields({"not-a-key": "1"})

    def test_nothing_to_send(self, systemd: socket.socket) -> None:
        """Only false/None fields: nothing is sent."""
        assert notify(ready=False) is False


class TestWatchdog:
    def test_unset(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No WATCHDOG_USEC, no watchdog."""
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        assert watchdog_interval() is None

    def test_for_us(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """WATCHDOG_USEC in seconds, when WATCHDOG_PID is ours or unset."""
        monkeypatch.setenv("WATCHDOG_USEC", "20000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        assert watchdog_interval() == 20.0
        monkeypatch.delenv("WATCHDOG_PID")
        assert watchdog_interval() == 20.0

    def test_for_another_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A watchdog meant for another PID is not ours."""
        monkeypatch.setenv("WATCHDOG_USEC", "20000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
        assert watchdog_interval() is None

    @pytest.mark.parametrize("value", ["", "abc", "0", "-5"])
    def test_invalid(self, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
        """Garbage or a non-positive period means no watchdog."""
        monkeypatch.setenv("WATCHDOG_USEC", value)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        assert watchdog_interval() is None
