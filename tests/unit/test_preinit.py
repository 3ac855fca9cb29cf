"""The helpers around a DPDK build's standby that initialises DPDK first
(ovs/preinit.py): telling it reached the live lock, and sweeping an orphaned
private ovsdb-server."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ovsndu.errors import OvsnduError
from ovsndu.ovs import preinit
from ovsndu.upgrade import leftovers


def test_contention_is_read_after_the_offset_and_for_that_pid(tmp_path: Path) -> None:
    log = tmp_path / "ovs-vswitchd.log"
    line = "2026-12-01T00:00:00.000Z|00048|bridge|ERR|" + preinit.CONTENDED
    log.write_text(line.format(pid=7) + " until it goes away\n")
    offset = preinit.log_size(log)
    assert not preinit.contended(log, offset, 7)  # logged before the switch
    with open(log, "a") as f:
        f.write(line.format(pid=71) + " until it goes away\n")
    assert not preinit.contended(log, offset, 7)  # another process
    with open(log, "a") as f:
        f.write(line.format(pid=7) + " until it goes away\n")
    assert preinit.contended(log, offset, 7)
    assert preinit.log_size(tmp_path / "missing") == 0
    assert not preinit.contended(tmp_path / "missing", 0, 7)


def test_an_orphaned_private_server_is_swept(tmp_path: Path) -> None:
    """Found by its command line (ovsdb-server on a database under the state directory's
    work/*/preinit/), killed by the sweep; another ovsdb-server is left alone."""
    state = tmp_path / "state"
    private = state / "work" / "20261201T000000-abcdef" / preinit.SUBDIR
    private.mkdir(parents=True)
    for db in (private / "conf.db", tmp_path / "conf.db"):
        db.touch()
    ours, other = (subprocess.Popen(["bash", "-c", 'exec -a /usr/sbin/ovsdb-server tail -f "$0"',
                                     str(db)], stdout=subprocess.DEVNULL)
                   for db in (private / "conf.db", tmp_path / "conf.db"))
    try:
        deadline = time.monotonic() + 5
        while preinit.orphans(state) != [ours.pid]:
            assert time.monotonic() < deadline, preinit.orphans(state)
            time.sleep(0.01)
        removed = leftovers.sweep(state)
        assert f"private ovsdb-server pid {ours.pid}" in removed
        assert ours.wait(timeout=5) == -9
        assert other.poll() is None
        assert not private.exists()
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


def test_a_failed_start_leaves_nothing(tmp_path: Path) -> None:
    """The live database unreachable: an error (the standby then starts the ordinary
    way, upgrade/handover.py), no private files, no link."""
    link, work = tmp_path / ".of-x.db.sock", tmp_path / "work"
    with pytest.raises(OvsnduError):
        preinit.Preinit.start(f"unix:{tmp_path / 'missing.sock'}", link, work,
                                   tmp_path / "p.sock")
    assert not (work / preinit.SUBDIR).exists()
    assert not link.is_symlink()
