"""Logging to journald's native protocol, against a real datagram socket standing in for it."""

from __future__ import annotations

import inspect
import io
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from ovsndu.systemd import journal as logs
from ovsndu.systemd.journal import (
    JournaldSink,
    configure_logging,
    dropped_count,
    encode_entry,
    field_name,
    journald_available,
)

Entry = dict[str, bytes]


def parse_entry(data: bytes) -> Entry:
    """Decode one native-protocol datagram the way journald does."""
    entry: Entry = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = end + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            pos = end + 10 + size
        entry[key.decode()] = value
    return entry


class FakeJournal:
    """A bound AF_UNIX datagram socket at ``path``, like /run/systemd/journal/socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(2)

    def entry(self) -> Entry:
        return parse_entry(self.sock.recv(1 << 20))

    def close(self) -> None:
        self.sock.close()
        Path(self.path).unlink(missing_ok=True)


@pytest.fixture(name="sock_path")
def _sock_path() -> Iterator[str]:
    """A short socket path (AF_UNIX paths are limited to 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="ovsndu-j")
    yield f"{directory}/socket"
    shutil.rmtree(directory)


@pytest.fixture(name="journal")
def _journal(sock_path: str) -> Iterator[FakeJournal]:
    journal = FakeJournal(sock_path)
    yield journal
    journal.close()


@pytest.fixture(autouse=True)
def _reset_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test configures logging afresh; the global state is restored after."""
    monkeypatch.setattr(logs, "_SINK", None)
    yield
    if logs._SINK is not None:
        logs._SINK.close()
    structlog.reset_defaults()


def _journald_only(path: str) -> JournaldSink:
    sink = configure_logging(journald=True, console=False, journal_socket=path)
    assert sink is not None
    return sink


class TestEntries:
    def test_fields(self, journal: FakeJournal) -> None:
        """An event becomes one entry with MESSAGE, PRIORITY, identifier and OVSNDU_ fields."""
        _journald_only(journal.path)
        log = structlog.get_logger().bind(upgrade_id="u-42", phase="handover")
        log.warning("upgrade.phase_failed", event_kind="phase", outcome="rolled_back", gap_ms=3)
        entry = journal.entry()
        assert entry["MESSAGE"].startswith(b"upgrade.phase_failed ")
        assert b"gap_ms=3" in entry["MESSAGE"]
        assert entry["PRIORITY"] == b"4"
        assert entry["SYSLOG_IDENTIFIER"] == b"ovsndu"
        assert entry["OVSNDU_UPGRADE_ID"] == b"u-42"
        assert entry["OVSNDU_PHASE"] == b"handover"
        assert entry["OVSNDU_EVENT"] == b"phase"
        assert entry["OVSNDU_OUTCOME"] == b"rolled_back"
        assert entry["OVSNDU_GAP_MS"] == b"3"
        assert "OVSNDU_LEVEL" not in entry

    @pytest.mark.parametrize(
        ("method", "priority"),
        [("debug", b"7"), ("info", b"6"), ("error", b"3"), ("critical", b"2")],
    )
    def test_priority(self, journal: FakeJournal, method: str, priority: bytes) -> None:
        """PRIORITY follows the syslog level of the call."""
        configure_logging(journald=True, console=False, journal_socket=journal.path, level="debug")
        getattr(structlog.get_logger(), method)("x")
        assert journal.entry()["PRIORITY"] == priority

    def test_call_site(self, journal: FakeJournal) -> None:
        """CODE_FILE/CODE_LINE/CODE_FUNC name the caller, not structlog or ovsndu.logs."""
        _journald_only(journal.path)
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        structlog.get_logger().info("here")
        entry = journal.entry()
        assert entry["CODE_FILE"] == __file__.encode()
        assert entry["CODE_LINE"] == str(line).encode()
        assert entry["CODE_FUNC"] == b"test_call_site"

    def test_multiline_values_are_binary_safe(self, journal: FakeJournal) -> None:
        """Values with newlines (and = signs, and non-UTF-8 bytes) arrive intact."""
        _journald_only(journal.path)
        text = "line one\nline=two\n\nend"
        structlog.get_logger().info("multi", detail=text, raw=b"\x00\xff\n=")
        entry = journal.entry()
        assert entry["OVSNDU_DETAIL"] == text.encode()
        assert entry["OVSNDU_RAW"] == b"\x00\xff\n="

    def test_exception_goes_into_message(self, journal: FakeJournal) -> None:
        """A logged exception's traceback follows the event in MESSAGE."""
        _journald_only(journal.path)
        try:
            raise RuntimeError("kaput")
        except RuntimeError:
            structlog.get_logger().exception("failed")
        entry = journal.entry()
        assert entry["PRIORITY"] == b"3"
        assert b"RuntimeError: kaput" in entry["MESSAGE"]
        assert entry["MESSAGE"].startswith(b"failed")

    def test_field_names_are_valid(self) -> None:
        """Odd keys become valid journal field names."""
        assert field_name("from") == "OVSNDU_FROM"
        assert field_name("child-pid.x") == "OVSNDU_CHILD_PID_X"
        assert len(field_name("k" * 100)) == 64

    def test_encode_round_trip(self) -> None:
        """The test parser reads what encode_entry writes."""
        fields = [("A", b"1"), ("B", b"x\ny"), ("C", b"")]
        assert parse_entry(encode_entry(fields)) == dict(fields)


class TestDrops:
    def test_missing_socket_counts_drops(self, sock_path: str) -> None:
        """Without journald, entries are counted as dropped; logging never raises."""
        _journald_only(sock_path)
        for _ in range(3):
            structlog.get_logger().info("lost")
        assert dropped_count() == 3

    def test_closed_socket_then_recovery(self, sock_path: str) -> None:
        """Drops while journald is away are reported by the next entry that gets through."""
        journal = FakeJournal(sock_path)
        _journald_only(sock_path)
        log = structlog.get_logger()
        log.info("first")
        assert journal.entry()["MESSAGE"] == b"first"
        journal.close()  # journald stops: the connected socket now fails
        log.info("lost 1")
        log.info("lost 2")
        assert dropped_count() == 2
        journal = FakeJournal(sock_path)  # journald is back, at a new socket
        try:
            log.info("back")
            entry = journal.entry()
            assert entry["MESSAGE"] == b"back"
            assert entry["OVSNDU_DROPPED"] == b"2"
            log.info("after")
            assert "OVSNDU_DROPPED" not in journal.entry()
        finally:
            journal.close()
        assert dropped_count() == 2

    def test_stalled_journal_does_not_block(self, journal: FakeJournal) -> None:
        """A full queue costs at most a few ms once, then entries drop at once."""
        _journald_only(journal.path)
        log = structlog.get_logger()
        started = time.monotonic()
        for i in range(500):
            log.info("burst", n=i)
        assert time.monotonic() - started < 2.0
        received = 0
        journal.sock.settimeout(0.05)
        while True:
            try:
                journal.sock.recv(1 << 16)
            except TimeoutError:
                break
            received += 1
        assert received > 0
        assert received + dropped_count() == 500

    def test_burst_loses_nothing_silently(self, journal: FakeJournal) -> None:
        """10k entries: received + dropped == sent, and every gap is reported in-band."""
        _journald_only(journal.path)
        entries: list[Entry] = []
        done = threading.Event()

        def receive() -> None:
            journal.sock.settimeout(0.1)
            while True:
                try:
                    entries.append(parse_entry(journal.sock.recv(1 << 16)))
                except TimeoutError:
                    if done.is_set():
                        return

        reader = threading.Thread(target=receive)
        reader.start()
        log = structlog.get_logger()
        sent = 10_000
        for i in range(sent):
            log.info("burst", n=i)
        done.set()
        reader.join()
        sink = logs._SINK
        assert sink is not None
        assert len(entries) + dropped_count() == sent
        previous = -1
        reported = 0
        for entry in entries:
            n = int(entry["OVSNDU_N"])
            gap = int(entry.get("OVSNDU_DROPPED", b"0"))
            assert n - previous - 1 == gap
            reported += gap
            previous = n
        assert reported + (sent - 1 - previous) == dropped_count()

    def test_oversized_entry_is_truncated(self, journal: FakeJournal) -> None:
        """An entry above the datagram limit is cut down, marked, and counted."""
        sink = _journald_only(journal.path)
        structlog.get_logger().info("big", blob="x" * (logs.MAX_DATAGRAM * 2))
        entry = journal.entry()
        assert entry["MESSAGE"].startswith(b"big")
        assert entry["OVSNDU_TRUNCATED"]
        assert sum(len(v) for v in entry.values()) <= logs.MAX_DATAGRAM
        assert sink.truncated == 1
        assert dropped_count() == 0


class TestConfiguration:
    def test_console_when_no_journal(self, sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without journald a readable line goes to the stream."""
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        out = io.StringIO()
        sink = configure_logging(journal_socket=sock_path, stream=out)
        assert sink is None
        structlog.get_logger().info("hello", phase="snapshot")
        text = out.getvalue()
        assert "hello" in text
        assert "phase" in text
        assert "snapshot" in text

    def test_both(self, journal: FakeJournal) -> None:
        """journald and console together: the entry is sent and the line printed."""
        out = io.StringIO()
        configure_logging(journald=True, console=True, journal_socket=journal.path, stream=out)
        structlog.get_logger().info("twice")
        assert journal.entry()["MESSAGE"] == b"twice"
        assert "twice" in out.getvalue()
        assert "pathname" not in out.getvalue()

    def test_journal_stream_selects_journald(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """$JOURNAL_STREAM (set by systemd for services) means journald."""
        monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
        assert journald_available("/nonexistent")
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journald_available("/nonexistent")

    def test_socket_without_tty_selects_journald(
        self, journal: FakeJournal, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The journal socket and no terminal means journald, and no console by default."""
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        monkeypatch.setattr("sys.stderr", io.StringIO())
        assert journald_available(journal.path)
        out = io.StringIO()
        sink = configure_logging(journal_socket=journal.path, stream=out)
        assert sink is not None
        structlog.get_logger().info("quiet")
        assert journal.entry()["MESSAGE"] == b"quiet"
        assert out.getvalue() == ""
