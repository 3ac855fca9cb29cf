"""Durable upgrade records: the in-flight file, the history log, corrupt and torn lines."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovsndu.errors import HistoryError
from ovsndu.upgrade.history import (
    CorruptLine,
    HistoryStore,
    PhaseEntry,
    UpgradeRecord,
    utc_now_iso,
)


def _record(upgrade_id: str = "u1", *, finished: bool = True) -> UpgradeRecord:
    return UpgradeRecord(
        id=upgrade_id,
        started_at="2024-05-01T10:00:00.000+00:00",
        from_version="3.1.0",
        to_version="3.1.1",
        from_pid=100,
        to_pid=200,
        from_binary="/usr/sbin/ovs-vswitchd",
        to_binary="/opt/ovs/ovs-vswitchd",
        rollback_binary="/var/lib/ovsndu/ovs-vswitchd.orig",
        standby_pid=200,
        phase="committed" if finished else "standby",
        phases=[
            PhaseEntry(
                phase="preflight", started="2024-05-01T10:00:00.000+00:00", duration_s=0.25, ok=True
            ),
            PhaseEntry(
                phase="snapshot",
                started="2024-05-01T10:00:00.250+00:00",
                duration_s=1.5,
                ok=False,
                reason="timeout\nwith a newline",
            ),
        ],
        counts={"flows": 100000, "conntrack": 10},
        digests={"flows": "ab" * 32},
        outcome="committed" if finished else None,
        exit_code=0 if finished else None,
        reason="",
        anomalies=["commit: pidfile stale"],
        uncarried={"conntrack": 2},
        handover_gap_ms=12.5,
    )


@pytest.fixture(name="store")
def _store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "state" / "ovsndu", on_corrupt=lambda _: None)


class TestRecord:
    def test_round_trip(self) -> None:
        """to_dict/from_dict is lossless, through JSON too."""
        record = _record()
        assert UpgradeRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record

    def test_minimal_record(self) -> None:
        """Only id and started_at are required."""
        record = UpgradeRecord.from_dict({"id": "x", "started_at": "t"})
        assert record == UpgradeRecord(id="x", started_at="t")

    def test_unknown_keys_are_ignored(self) -> None:
        """A newer writer's extra fields do not make a record unreadable."""
        data = _record().to_dict() | {"future_field": [1, 2]}
        assert UpgradeRecord.from_dict(data) == _record()

    @pytest.mark.parametrize(
        "change",
        [
            {"id": None},
            {"id": 5},
            {"from_pid": "12"},
            {"from_pid": True},
            {"counts": {"flows": "many"}},
            {"digests": {"flows": 1}},
            {"phases": [{"phase": "x"}]},
            {"phases": ["x"]},
            {"anomalies": [1]},
            {"uncarried": {"conntrack": "two"}},
            {"uncarried": ["conntrack"]},
            {"handover_gap_ms": "fast"},
            {"format": 99},
        ],
    )
    def test_wrong_shapes_raise(self, change: dict[str, object]) -> None:
        """A wrong type is a HistoryError, never a TypeError or KeyError."""
        with pytest.raises(HistoryError):
            UpgradeRecord.from_dict(_record().to_dict() | change)

    @given(
        st.builds(
            UpgradeRecord,
            id=st.text(),
            started_at=st.text(),
            from_pid=st.none() | st.integers(),
            counts=st.dictionaries(st.text(), st.integers()),
            anomalies=st.lists(st.text()),
            handover_gap_ms=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        )
    )
    def test_any_record_round_trips(self, record: UpgradeRecord) -> None:
        """Arbitrary text and numbers survive JSON."""
        assert UpgradeRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record

    def test_now_iso_is_utc(self) -> None:
        """Record timestamps are UTC ISO 8601."""
        assert utc_now_iso().endswith("+00:00")


class TestInflight:
    def test_none_when_absent(self, store: HistoryStore) -> None:
        """No file, no in-flight upgrade; the directory is not created by reading."""
        assert store.inflight() is None
        assert not store.state_dir.exists()

    def test_write_and_read(self, store: HistoryStore) -> None:
        """The in-flight record reads back equal, replaced by each write."""
        record = _record(finished=False)
        store.write_inflight(record)
        assert store.inflight() == record
        record.phase = "handover"
        store.write_inflight(record)
        assert store.inflight() == record
        leftovers = [p.name for p in store.state_dir.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []

    def test_state_dir_is_private(self, store: HistoryStore) -> None:
        """The state directory is created 0700 and the files 0600, whatever the umask."""
        old = os.umask(0o022)
        try:
            store.write_inflight(_record(finished=False))
        finally:
            os.umask(old)
        assert stat.S_IMODE(store.state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(store.inflight_path.stat().st_mode) == 0o600

    def test_corrupt_inflight_raises(self, store: HistoryStore) -> None:
        """A damaged in-flight file is an error naming the file (recovery must decide)."""
        store.write_inflight(_record(finished=False))
        store.inflight_path.write_text("{not json")
        with pytest.raises(HistoryError, match=r"inflight\.json"):
            store.inflight()


class TestHistory:
    def test_empty(self, store: HistoryStore) -> None:
        """No history file means no records."""
        assert store.all() == []
        assert store.last() is None

    def test_finish_appends_and_clears_inflight(self, store: HistoryStore) -> None:
        """finish() appends one line and removes the in-flight record."""
        store.write_inflight(_record("a", finished=False))
        store.finish(_record("a"))
        store.finish(_record("b"))
        assert store.inflight() is None
        assert [r.id for r in store.all()] == ["a", "b"]
        assert store.last() == _record("b")
        lines = store.history_path.read_bytes().split(b"\n")
        assert len(lines) == 3
        assert lines[-1] == b""
        assert stat.S_IMODE(store.history_path.stat().st_mode) == 0o600

    def test_unfinished_record_is_refused(self, store: HistoryStore) -> None:
        """Only a record with an outcome goes into the history."""
        with pytest.raises(ValueError, match="no outcome"):
            store.finish(_record(finished=False))

    def test_torn_last_line(self, tmp_path: Path) -> None:
        """A torn line (crash mid-append) is skipped and reported; the next append is whole."""
        reported: list[CorruptLine] = []
        store = HistoryStore(tmp_path, on_corrupt=reported.append)
        store.finish(_record("a"))
        whole = json.dumps(_record("b").to_dict()).encode()
        with store.history_path.open("ab") as f:
            f.write(whole[: len(whole) // 2])
        assert [r.id for r in store.all()] == ["a"]
        assert [c.lineno for c in reported] == [2]
        assert store.corrupt == reported
        store.finish(_record("c"))
        assert [r.id for r in store.all()] == ["a", "c"]
        assert [c.lineno for c in store.corrupt] == [2]

    def test_corrupt_middle_line(self, store: HistoryStore) -> None:
        """Garbage or a wrong shape in the middle only costs that line."""
        store.finish(_record("a"))
        with store.history_path.open("ab") as f:
            f.write(b'\xff\xfe not json\n{"id": 3}\n[]\n')
        store.finish(_record("b"))
        assert [r.id for r in store.all()] == ["a", "b"]
        assert [c.lineno for c in store.corrupt] == [2, 3, 4]

    def test_default_report_is_a_warning(self, tmp_path: Path) -> None:
        """Without on_corrupt, a skipped line is logged, not raised."""
        from structlog.testing import capture_logs

        store = HistoryStore(tmp_path)
        store.history_path.write_bytes(b"oops\n")
        with capture_logs() as logs:
            assert store.all() == []
        assert logs[0]["event"] == "history.corrupt_line"
        assert logs[0]["log_level"] == "warning"
