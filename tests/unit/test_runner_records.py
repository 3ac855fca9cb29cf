"""The runner's records: written before anything is announced, failures kept, never raised."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ovsndu.config import Config
from ovsndu.upgrade import history, machine
from ovsndu.upgrade.history import HistoryStore, write_private
from ovsndu.upgrade.runner import UpgradeRunner
from ovsndu.upgrade.serving import Serving


def runner(tmp_path: Path, progress: object = None) -> UpgradeRunner:
    cfg = Config.from_dict({"ovs": {"rundir": str(tmp_path / "run")},
                            "ovsndu": {"state_dir": str(tmp_path / "state")}})
    store = HistoryStore(tmp_path / "state")
    return UpgradeRunner(cfg, Serving(1, None, "/usr/sbin/ovs-vswitchd"), store,
                         new_binary="/usr/sbin/ovs-vswitchd", timeout=10,
                         progress=progress)  # type: ignore[arg-type]


def test_inflight_record_is_written_before_the_phase_event(tmp_path: Path) -> None:
    seen: list[str | None] = []
    store = HistoryStore(tmp_path / "state")

    def progress(event: dict[str, object]) -> None:
        if event.get("event") == "phase":
            rec = store.inflight()
            seen.append(rec.phase if rec is not None else None)

    r = runner(tmp_path, progress)
    state, _ = machine.start(r.upgrade_id, 0.0, 10, True)
    r._enter(state)
    assert seen == ["preflight"]


def test_inflight_write_failure_is_kept_not_raised(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    r = runner(tmp_path)

    def full(_record: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(r.store, "write_inflight", full)
    state, _ = machine.start(r.upgrade_id, 0.0, 10, True)
    r._enter(state)
    r._enter(state)
    assert r.inflight_error is not None and "No space left" in r.inflight_error
    assert r.record.anomalies == [r.inflight_error]  # reported once


def test_private_files_have_no_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mode 0600 from the creating call on, whatever the umask or an older file's mode."""
    modes: list[int] = []
    real = history._write_all

    def spy(fd: int, data: bytes) -> None:
        modes.append(os.fstat(fd).st_mode & 0o777)
        real(fd, data)

    monkeypatch.setattr(history, "_write_all", spy)
    old = os.umask(0)
    try:
        write_private(tmp_path / "new", b"secret")
        (tmp_path / "old").write_bytes(b"")
        (tmp_path / "old").chmod(0o644)
        write_private(tmp_path / "old", b"secret")
    finally:
        os.umask(old)
    assert modes == [0o600, 0o600]
    assert (tmp_path / "old").read_bytes() == b"secret"
