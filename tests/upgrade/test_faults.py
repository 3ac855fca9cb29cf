"""Fault injection: after each fault exactly one vswitchd serves, with the full state, the
documented exit code, and a logged reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ovsndu.model import Snapshot
from ovsndu.ovs import daemon
from ovsndu.ovs.readers import read_snapshot
from ovsndu.upgrade.leftovers import clients_of
from tests.upgrade.conftest import Rig, fake_binary, make_rig

# Sleep before starting, but only outside the live database (i.e. in the rehearsal).
SLOW_REHEARSAL = 'if [ "$1" != "--version" ] && [[ "$1" != "$LIVE_DB"* ]]; then sleep 3; fi\n' \
                 'exec "$REAL" "$@"'


def _intact(rig: Rig, before: Snapshot, code: int, result: dict[str, Any], *,
            expect: int, reason: str) -> None:
    assert code == expect, result
    assert reason in result.get("reason", ""), result
    pids = rig.vswitchd_pids()
    assert len(pids) == 1, pids
    assert daemon.read_pid(rig.sb.rundir / "ovs-vswitchd.pid") == pids[0]
    after = read_snapshot(rig.sb.rundir, rig.sb.db)
    assert after.vswitchd.pid == pids[0]
    assert after.digests() == before.digests()
    assert rig.status()["vswitchd"]["pid"] == pids[0]
    last = json.loads(rig.cli("history", "--json").stdout)[-1]
    assert last["exit_code"] == expect
    assert reason in last["reason"]
    assert reason in rig.log_path.read_text(), "the reason is logged"


def _reload_in_background(rig: Rig, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ovsndu", "reload", "--config",
                             str(rig.cfg_path), "--json", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, (json.loads(out) if out.strip() else {"stderr": err})


def _wait(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _client_pid(rig: Rig) -> int | None:
    """This rig's client process (other tests on the machine may run their own)."""
    pids = clients_of(Path(rig.cfg.ovsndu.state_dir))
    return pids[0] if pids else None


def test_new_binary_missing(rig: Rig, tmp_path: Path) -> None:
    """Refused before anything changed: exit 2."""
    before = read_snapshot(rig.sb.rundir, rig.sb.db)
    code, result = rig.reload("--vswitchd", str(tmp_path / "nope"))
    _intact(rig, before, code, result, expect=2, reason="does not exist")
    assert before.vswitchd.pid == rig.vswitchd_pids()[0]


@pytest.mark.parametrize("validate", [True, False])
def test_new_binary_crashes_at_start(tmp_path: Path, validate: bool) -> None:
    """It reports a version but dies when run: caught by the rehearsal, or by the standby."""
    with make_rig(tmp_path, validate=validate) as rig:
        bad = fake_binary(tmp_path, "crashing", '[ "$1" = --version ] && exec "$REAL" "$@"\n'
                          'kill -SEGV $$')
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        code, result = rig.reload("--vswitchd", str(bad))
        _intact(rig, before, code, result, expect=1,
                reason="client failed" if validate else "exited at start")
        assert rig.vswitchd_pids() == [before.vswitchd.pid]


def test_new_binary_hangs(tmp_path: Path) -> None:
    """A new binary that never comes up: the deadline rolls back (the server never stopped)."""
    with make_rig(tmp_path, timeout=8) as rig:
        bad = fake_binary(tmp_path, "hanging", '[ "$1" = --version ] && exec "$REAL" "$@"\n'
                          'exec sleep 600')
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        code, result = rig.reload("--vswitchd", str(bad))
        _intact(rig, before, code, result, expect=1, reason="deadline passed")
        assert rig.vswitchd_pids() == [before.vswitchd.pid]


def test_new_binary_exits_during_sync(tmp_path: Path) -> None:
    """The new vswitchd dies while the state is being installed into it."""
    with make_rig(tmp_path) as rig:
        # Dies as soon as the sample's flows reach it: while the state is installed.
        bad = fake_binary(tmp_path, "dying", '[ "$1" = --version ] && exec "$REAL" "$@"\n'
                          '( until ovs-ofctl dump-flows "unix:$OVS_RUNDIR/br0.mgmt" 2>/dev/null'
                          ' | grep -q 0xfeed; do sleep 0.01; done; kill -KILL $$ ) &\n'
                          'exec "$REAL" "$@"')
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        code, result = rig.reload("--vswitchd", str(bad))
        _intact(rig, before, code, result, expect=1, reason="failed")
        assert rig.vswitchd_pids() == [before.vswitchd.pid]


def test_new_vswitchd_rejects_a_flow(rig: Rig) -> None:
    """A table limit set after its flows were installed: the new process refuses one."""
    rig.sb.vsctl("--", "--id=@ft", "create", "Flow_Table", "flow_limit=1",
                 "overflow_policy=refuse", "--", "set", "Bridge", "br0",
                 "flow_tables:2=@ft")
    before = read_snapshot(rig.sb.rundir, rig.sb.db)
    assert len([f for f in before.categories["flows"]
                if f.bridge == "br0" and f.table == 2]) == 2  # type: ignore[attr-defined]
    code, result = rig.reload()
    _intact(rig, before, code, result, expect=1, reason="flows")
    assert "rejected" in result["reason"]


def test_new_vswitchd_crashes_right_after_takeover(tmp_path: Path) -> None:
    """It takes over, then dies: the original binary is restarted with the whole state."""
    with make_rig(tmp_path, db_env="CRASH_DB") as rig:
        bad = fake_binary(tmp_path, "crash-after", (
            # The standby's OVS_RUNDIR is private: find the rundir by its pidfile.
            'for a in "$@"; do case $a in --pidfile=*) D=$(dirname "${a#*=}");; esac; done\n'
            'if [[ "$1" == "$CRASH_DB"* ]] && [[ "$*" == *standby.pid* ]]; then\n'
            '  ( until [ "$(cat "$D/ovs-vswitchd.pid" 2>/dev/null)" = "$$" ]; do\n'
            '      sleep 0.002; done; sleep 0.02; kill -KILL $$ ) &\n'
            'fi\nexec "$REAL" "$@"'))
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        code, result = rig.reload("--vswitchd", str(bad))
        _intact(rig, before, code, result, expect=1, reason="handover failed")
        assert rig.vswitchd_pids() != [before.vswitchd.pid]


def test_client_killed_mid_sync(tmp_path: Path) -> None:
    """SIGKILL of the client during its rehearsal: discarded, the server never stopped."""
    with make_rig(tmp_path, db_env="LIVE_DB") as rig:
        slow = fake_binary(tmp_path, "slow", SLOW_REHEARSAL)
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        proc = _reload_in_background(rig, "--vswitchd", str(slow))
        _wait(lambda: _client_pid(rig) is not None)
        time.sleep(0.5)
        os.kill(_client_pid(rig) or 0, signal.SIGKILL)
        code, result = _finish(proc)
        _intact(rig, before, code, result, expect=1, reason="client failed")
        assert rig.vswitchd_pids() == [before.vswitchd.pid]


def test_server_vswitchd_killed_mid_sync(tmp_path: Path) -> None:
    """The serving vswitchd dies during the sync: the original binary comes back with it all."""
    with make_rig(tmp_path, db_env="LIVE_DB") as rig:
        slow = fake_binary(tmp_path, "slow", SLOW_REHEARSAL)
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        proc = _reload_in_background(rig, "--vswitchd", str(slow))
        _wait(lambda: _client_pid(rig) is not None)
        os.kill(before.vswitchd.pid or 0, signal.SIGKILL)
        code, result = _finish(proc)
        _intact(rig, before, code, result, expect=1, reason="serving vswitchd")
        assert rig.vswitchd_pids() != [before.vswitchd.pid]


def test_deadline_passes(tmp_path: Path) -> None:
    """A standby slower than the upgrade's timeout: rolled back, reason names the deadline."""
    with make_rig(tmp_path, validate=False, timeout=3) as rig:
        slow = fake_binary(tmp_path, "slow-standby", '[ "$1" = --version ] && exec "$REAL" "$@"'
                           '\nsleep 5\nexec "$REAL" "$@"')
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        code, result = rig.reload("--vswitchd", str(slow))
        _intact(rig, before, code, result, expect=1, reason="deadline passed in standby")


def test_second_reload_while_one_runs(tmp_path: Path) -> None:
    """The second is refused as busy (exit 2); the first completes."""
    with make_rig(tmp_path, db_env="LIVE_DB") as rig:
        slow = fake_binary(tmp_path, "slow", SLOW_REHEARSAL)
        first = _reload_in_background(rig, "--vswitchd", str(slow))
        _wait(lambda: rig.status().get("phase") not in ("idle", None))
        code, result = rig.reload()
        assert code == 2, result
        assert "busy" in result["reason"]
        code, result = _finish(first)
        assert code == 0, result
        assert len(rig.vswitchd_pids()) == 1


def test_supervisor_killed_during_handover(tmp_path: Path) -> None:
    """SIGKILL of the supervisor in the handover; its next start leaves one vswitchd with it all."""
    with make_rig(tmp_path) as rig:
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        inflight = Path(rig.cfg.ovsndu.state_dir) / "inflight.json"
        proc = _reload_in_background(rig)

        def in_handover() -> bool:
            try:
                return json.loads(inflight.read_text()).get("phase") == "handover"
            except (OSError, ValueError):
                return False

        _wait(in_handover, 60)
        rig.supervisor.kill()
        rig.supervisor.wait()
        proc.communicate(timeout=60)
        rig.start_supervisor()
        pids = rig.vswitchd_pids()
        assert len(pids) == 1, pids
        assert daemon.read_pid(rig.sb.rundir / "ovs-vswitchd.pid") == pids[0]
        assert read_snapshot(rig.sb.rundir, rig.sb.db).digests() == before.digests()
        last = json.loads(rig.cli("history", "--json").stdout)[-1]
        assert last["outcome"] in ("committed", "rolled_back")
        assert "supervisor restarted during handover" in last["reason"]
        assert "supervisor.recovering" in rig.log_path.read_text()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_supervisor_killed_while_the_old_process_is_stopped(tmp_path: Path) -> None:
    """The final catch-up SIGSTOPs the old vswitchd for a few ms before it kills it; a
    supervisor killed in between leaves it stopped, its conntrack frozen.  Its next
    start continues it and puts its conntrack limit back: it serves again, with its
    state, alone."""
    with make_rig(tmp_path) as rig:
        before = read_snapshot(rig.sb.rundir, rig.sb.db)
        old = before.vswitchd.pid
        inflight = Path(rig.cfg.ovsndu.state_dir) / "inflight.json"
        proc = _reload_in_background(rig)

        def before_handover() -> bool:  # the client phase (its rehearsal) lasts a while
            try:
                return json.loads(inflight.read_text()).get("phase") == "client"
            except (OSError, ValueError):
                return False

        _wait(before_handover, 60)
        rig.supervisor.kill()
        rig.supervisor.wait()
        proc.communicate(timeout=60)
        # The moment of the catch-up: handover recorded, old process stopped.
        rec = json.loads(inflight.read_text())
        rec["phase"] = "handover"
        # ... and its conntrack frozen for that read (ovs/ct_freeze.py).
        (dp,) = rig.sb.appctl("dpctl/dump-dps").split()
        rec["ct_frozen"] = {dp: 400000}
        inflight.write_text(json.dumps(rec))
        rig.sb.appctl("dpctl/ct-set-maxconns", dp, "0")
        os.kill(old, signal.SIGSTOP)
        _wait(lambda: _state(old) in ("T", "t"), 5)
        rig.start_supervisor()
        assert _state(old) not in ("T", "t")
        assert rig.vswitchd_pids() == [old]
        assert rig.sb.appctl("dpctl/ct-get-maxconns", dp).strip() == "400000"
        assert read_snapshot(rig.sb.rundir, rig.sb.db).digests() == before.digests()
        last = json.loads(rig.cli("history", "--json").stdout)[-1]
        assert last["outcome"] == "rolled_back", last
