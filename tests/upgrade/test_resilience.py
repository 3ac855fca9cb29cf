"""No single point of failure (issue 13), on private sandboxes with a real supervisor.

Each fault ends with exactly one vswitchd serving the full state — judged by the raw
output of ovs-ofctl (flows, groups, meters of every bridge) before and after, our
digests as a second opinion — and a truthful exit code.  The systemd side (kill -9 of
the supervisor under traffic, reexec, stop/start/restart) is tests/systemd/test_resilience.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ovsndu.ovs.readers import read_snapshot
from ovsndu.upgrade.leftovers import clients_of
from tests.upgrade.conftest import Rig, fake_binary, make_rig

# Sleep before starting, but only outside the live database (i.e. in the rehearsal).
SLOW_REHEARSAL = ('if [ "$1" != "--version" ] && [[ "$1" != "$LIVE_DB"* ]]; then sleep 3; fi\n'
                  'exec "$REAL" "$@"')
# The standby (the new vswitchd on the live database) takes 3 s to start.
SLOW_STANDBY = ('if [[ "$*" == *standby.pid* ]]; then sleep 3; fi\n'
                'exec "$REAL" "$@"')


def raw_state(rig: Rig) -> dict[str, str]:
    """ovs-ofctl's own output (no counters) for every bridge: what "state retained" means."""
    env = rig.sb.env
    bridges = subprocess.run(["ovs-vsctl", f"--db={rig.sb.db}", "list-br"], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for br in bridges:
        for what in ("dump-flows", "dump-groups", "dump-meters"):
            args = ["ovs-ofctl", "-O", "OpenFlow13,OpenFlow14,OpenFlow15", what, br]
            if what == "dump-flows":
                args.append("--no-stats")
            r = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
            assert r.returncode == 0, r.stderr
            lines = [ln.strip() for ln in r.stdout.splitlines() if " reply " not in ln]
            out[f"{br} {what}"] = "\n".join(sorted(
                ln for ln in lines if not ln.startswith("duration")))
    return out


def same_raw(rig: Rig, before: dict[str, str]) -> None:
    """The raw tool output equals *before*, with a readable diff when it does not."""
    import difflib

    after = raw_state(rig)
    assert after.keys() == before.keys()
    for key, text in before.items():
        diff = list(difflib.unified_diff(text.splitlines(), after[key].splitlines(),
                                         lineterm="", n=0))
        assert not diff, f"{key}:\n" + "\n".join(diff[:20])


def one_serving(rig: Rig) -> int:
    pids = rig.vswitchd_pids()
    assert len(pids) == 1, pids
    return pids[0]


def wait(what: str, predicate: Callable[[], bool], timeout: float = 60) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - started


def inflight_phase(rig: Rig) -> str | None:
    try:
        data = json.loads((Path(rig.cfg.ovsndu.state_dir) / "inflight.json").read_text())
    except (OSError, ValueError):
        return None
    phase = data.get("phase")
    return phase if isinstance(phase, str) else None


def reload_in_background(rig: Rig, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ovsndu", "reload", "--config",
                             str(rig.cfg_path), "--json", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, (json.loads(out) if out.strip() else {"stderr": err})


def _ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def last_record(rig: Rig) -> dict[str, Any]:
    records: list[dict[str, Any]] = json.loads(rig.cli("history", "--json").stdout)
    return records[-1]


# --- a crashed vswitchd ----------------------------------------------------------------------
def test_killed_vswitchd_comes_back_with_its_state(rig: Rig) -> None:
    before, digests, old = raw_state(rig), read_snapshot(rig.sb.rundir, rig.sb.db), \
        one_serving(rig)
    wait("the last known state", lambda: (rig.status().get("last_known_state") or {})
         .get("vswitchd_pid") == old)
    kept = rig.status()["last_known_state"]  # how often its conntrack is read, and why
    assert kept["traffic_every_s"] >= 0 and kept["traffic_hold_ms"] >= 0, kept
    binary = os.readlink(f"/proc/{old}/exe")
    os.kill(old, signal.SIGKILL)
    took = wait("a restarted vswitchd", lambda: rig.status().get("vswitchd", {})
                .get("pid") not in (None, old))
    new = one_serving(rig)
    assert new != old
    assert os.readlink(f"/proc/{new}/exe") == binary
    same_raw(rig, before)
    assert read_snapshot(rig.sb.rundir, rig.sb.db).digests() == digests.digests()
    assert "supervisor.vswitchd_restored" in rig.log_path.read_text()
    print(f"\nvswitchd back with its state {took:.2f} s after SIGKILL")


def test_a_change_reaches_the_last_known_state(rig: Rig) -> None:
    """An OpenFlow change made after start is in what comes back."""
    wait("the last known state", lambda: rig.status().get("last_known_state") is not None)
    taken = rig.status()["last_known_state"]["snapshots"]
    subprocess.run(["ovs-ofctl", "add-flow", "br0", "table=7,priority=7,cookie=0x77,actions=drop"],
                   env=rig.sb.env, check=True)
    # Seen through the OpenFlow message counter, long before the 60 s refresh.
    took = wait("a fresh snapshot", lambda: rig.status()["last_known_state"]["snapshots"]
                > taken, 30)
    assert took < 10
    before, old = raw_state(rig), one_serving(rig)
    assert "cookie=0x77" in before["br0 dump-flows"]
    os.kill(old, signal.SIGKILL)
    wait("a restarted vswitchd", lambda: rig.status().get("vswitchd", {})
         .get("pid") not in (None, old))
    same_raw(rig, before)


def test_a_committed_upgrade_hands_its_verified_state_to_the_keeper(rig: Rig) -> None:
    """At the commit the last known state becomes the new process's, as the upgrade
    verified it (not a fresh read of its conntrack: keeper.adopt)."""
    wait("the last known state", lambda: rig.status().get("last_known_state") is not None)
    code, result = rig.reload()
    assert code == 0, result
    state, new = rig.status()["last_known_state"], one_serving(rig)
    assert state["vswitchd_pid"] == new
    assert state["entries"] == sum(result["record"]["counts"].values())


# --- a killed or replaced supervisor ---------------------------------------------------------
def test_supervisor_kill_9_when_idle_leaves_vswitchd_alone(rig: Rig) -> None:
    before, old = raw_state(rig), one_serving(rig)
    rig.supervisor.kill()
    rig.supervisor.wait()
    assert one_serving(rig) == old
    rig.start_supervisor()
    assert one_serving(rig) == old and rig.status()["vswitchd"]["pid"] == old
    same_raw(rig, before)


def test_reexec_keeps_vswitchd_and_the_process(rig: Rig) -> None:
    before, old, supervisor = raw_state(rig), one_serving(rig), rig.supervisor.pid
    r = rig.cli("reexec", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"vswitchd pid {old}" in r.stdout
    assert rig.status()["supervisor_pid"] == supervisor and rig.supervisor.poll() is None
    assert one_serving(rig) == old and raw_state(rig) == before


def test_supervisor_killed_mid_client_kills_the_orphan_and_sweeps(tmp_path: Path) -> None:
    with make_rig(tmp_path, db_env="LIVE_DB") as rig:
        slow = fake_binary(tmp_path, "slow", SLOW_REHEARSAL)
        before, old = raw_state(rig), one_serving(rig)
        state = Path(rig.cfg.ovsndu.state_dir)
        proc = reload_in_background(rig, "--vswitchd", str(slow))
        wait("the client's rehearsal", lambda: any(state.glob("work/*/rehearsal")))
        # The supervisor's child (a fork the client makes shows the same command line
        # until it execs).
        (client,) = [pid for pid in clients_of(state) if _ppid(pid) == rig.supervisor.pid]
        rehearsal = Path(next(state.glob("work/*/rehearsal")).read_text().strip())
        assert rehearsal.is_dir() and any(state.glob("rollback/*/ovs-vswitchd"))
        rig.supervisor.kill()
        rig.supervisor.wait()
        code, _ = finish(proc)
        assert code == 3  # the caller cannot know the outcome: never "refused" (2)
        rig.start_supervisor()
        assert not Path(f"/proc/{client}").exists() or b"ovsndu.upgrade.client" not in \
            Path(f"/proc/{client}/cmdline").read_bytes()
        assert not rehearsal.exists()
        left = [p.name for pattern in ("work/*", "rollback/*", "*.snapshot.json",
                                       ".inflight*", "inflight.json", "sync/*.sock")
                for p in state.glob(pattern)]
        assert not left, left
        assert one_serving(rig) == old and raw_state(rig) == before
        last = last_record(rig)
        assert last["outcome"] == "rolled_back" and "during client" in last["reason"]


def test_a_kill_in_preflight_leaves_a_record(tmp_path: Path) -> None:
    """The in-flight record is written before the phase event goes out."""
    with make_rig(tmp_path) as rig:
        slow = fake_binary(tmp_path, "slow-version",
                           '[ "$1" = --version ] && sleep 3\nexec "$REAL" "$@"')
        old = one_serving(rig)
        proc = subprocess.Popen([sys.executable, "-m", "ovsndu", "reload", "--config",
                                 str(rig.cfg_path), "--vswitchd", str(slow)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("preflight")  # the phase event
        assert inflight_phase(rig) == "preflight"
        rig.supervisor.kill()
        rig.supervisor.wait()
        proc.communicate(timeout=60)
        rig.start_supervisor()
        last = last_record(rig)
        assert last["outcome"] == "rolled_back"
        assert "during preflight" in last["reason"]
        assert one_serving(rig) == old


# --- a frozen original -----------------------------------------------------------------------
def test_frozen_original_is_replaced_from_the_snapshot(tmp_path: Path) -> None:
    with make_rig(tmp_path, db_env="LIVE_DB", timeout=60) as rig:
        slow = fake_binary(tmp_path, "slow", SLOW_REHEARSAL)
        before, old = raw_state(rig), one_serving(rig)
        proc = reload_in_background(rig, "--vswitchd", str(slow))
        wait("the client phase", lambda: inflight_phase(rig) == "client")
        os.kill(old, signal.SIGSTOP)
        try:
            code, result = finish(proc)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGCONT)
        assert code == 1, result
        new = one_serving(rig)
        assert new != old and rig.status()["vswitchd"]["pid"] == new
        same_raw(rig, before)
        assert any("did not answer" in a for a in result["record"]["anomalies"]), result


# --- a full disk -----------------------------------------------------------------------------
@contextlib.contextmanager
def small_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs as the rig's state directory (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI is set and this test needs root (mount)")
        pytest.skip("needs root to mount a tmpfs; CI is unset, so skipping")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(state)],
                   check=True)
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of *directory* to the last byte."""
    filler = directory / "filler"
    errors: list[int | None] = []
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            errors.append(exc.errno)
    assert errors == [errno.ENOSPC]
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as f:
        while True:
            f.write(b"\0")
    return filler


@contextlib.contextmanager
def kept_full(directory: Path) -> Iterator[Path]:
    """:func:`fill`, and whatever is freed meanwhile (e.g. the standby's private database
    removed, ovs/preinit.py) is taken again at once, until the block ends."""
    filler = fill(directory)
    stop = threading.Event()

    def top_up() -> None:
        with open(filler, "ab", buffering=0) as f:
            while not stop.is_set():
                try:
                    f.write(b"\0" * 4096)
                except OSError:
                    with contextlib.suppress(OSError):
                        f.write(b"\0")
                    stop.wait(0.001)

    thread = threading.Thread(target=top_up, daemon=True)
    thread.start()
    try:
        yield filler
    finally:
        stop.set()
        thread.join()


def test_disk_full_from_standby_on_still_tells_the_outcome(tmp_path: Path) -> None:
    with small_state_dir(tmp_path) as state, make_rig(tmp_path, db_env="LIVE_DB") as rig:
        slow = fake_binary(tmp_path, "slow-standby", SLOW_STANDBY)
        before = raw_state(rig)
        proc = reload_in_background(rig, "--vswitchd", str(slow))
        wait("the standby phase", lambda: inflight_phase(rig) == "standby")
        with kept_full(state) as filler:
            code, result = finish(proc)
        assert code == 0, result  # the new vswitchd serves: committed, and said so
        assert result["outcome"] == "committed"
        assert any("history record not written" in a for a in result["record"]["anomalies"])
        new = one_serving(rig)
        assert rig.status()["vswitchd"]["pid"] == new and raw_state(rig) == before
        assert not (state / "inflight.json").exists()
        assert not list(state.glob(".inflight*"))
        assert "upgrade.record_not_written" in rig.log_path.read_text()
        filler.unlink()


def test_disk_full_at_client_rolls_back_without_orphans(tmp_path: Path) -> None:
    with small_state_dir(tmp_path) as state, make_rig(tmp_path, db_env="LIVE_DB") as rig:
        slow = fake_binary(tmp_path, "slow", SLOW_REHEARSAL)
        before, old = raw_state(rig), one_serving(rig)
        proc = reload_in_background(rig, "--vswitchd", str(slow))
        wait("the client phase", lambda: inflight_phase(rig) == "client")
        filler = fill(state)
        code, result = finish(proc)
        assert code == 1, result
        assert result.get("reason"), result
        assert not clients_of(state)
        assert one_serving(rig) == old and raw_state(rig) == before
        assert not list(state.glob(".inflight*"))
        filler.unlink()


# --- hygiene ---------------------------------------------------------------------------------
def test_state_dir_made_private_whatever_existed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    with make_rig(tmp_path) as rig:
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        code, result = rig.reload()
        assert code == 0, result
        for path in state.rglob("*"):
            if path.is_file() and not path.name.endswith(".log"):
                assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_bad_control_requests_get_one_line_answers(rig: Rig) -> None:
    import socket

    def ask(raw: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(15)
            s.connect(rig.cfg.ovsndu.control_socket)
            s.sendall(raw + b"\n")
            data = s.makefile("rb").readline()
        assert data, f"no answer to {raw[:40]!r}"
        answer: dict[str, Any] = json.loads(data)
        return answer

    bad = [b"[1, 2]", b'"reload"', b"42", b"[" * 10_000 + b"]" * 10_000,
           *(b'{"op": "reload", "timeout": %s}' % t for t in
             (b"[1]", b"1e999", b"1e308", b"-5", b"0", b'"ten"', b"true", b"NaN",
              b"Infinity")),
           b'{"op": "reload", "vswitchd": ["x"]}']
    old = one_serving(rig)
    for raw in bad:
        answer = ask(raw)
        assert answer["event"] == "error" and answer["exit_code"] == 2, (raw[:40], answer)
        assert "\n" not in answer["reason"] and len(answer["reason"]) < 300
    assert rig.status()["phase"] == "idle" and one_serving(rig) == old


@pytest.mark.parametrize("value", ["-5", "nan", "0", "inf"])
def test_reload_timeout_must_be_positive(rig: Rig, value: str) -> None:
    r = rig.cli("reload", f"--timeout={value}")
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "timeout" in r.stderr


def test_status_as_non_root_is_one_line(rig: Rig, tmp_path: Path) -> None:
    """A readable config, a state directory only root may enter: one line, no traceback."""
    readable = Path(f"/tmp/ovsndu-test-{os.getpid()}.toml")
    readable.write_text(rig.cfg_path.read_text())
    readable.chmod(0o644)
    try:
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-m", "ovsndu", "status", "--config",
                            str(readable)],
                           capture_output=True, text=True, check=False, timeout=60,
                           env={**os.environ, "HOME": "/"})
    finally:
        readable.unlink()
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# How a failing new binary ends, and what it says before: as the rehearsal (outside the
# live database) or as the standby (on it); the other role runs the real binary.
FAILURES = {
    "exit": ('echo "boom: cannot parse --frobnicate" >&2\nexit 7', "exit status 7",
             "boom: cannot parse --frobnicate"),
    "signal": ('echo "about to crash" >&2\nkill -SEGV $$', "signal SIGSEGV", "about to crash"),
    "hang": ('echo "waiting for nothing" >&2\nexec sleep 600', "still running",
             "waiting for nothing"),
}
IN_ROLE = {"rehearsal": '[[ "$1" != "$LIVE_DB"* ]]', "standby": '[[ "$1" == "$LIVE_DB"* ]]'}


@pytest.mark.parametrize("kind", sorted(FAILURES))
@pytest.mark.parametrize("role", sorted(IN_ROLE))
def test_a_failing_binary_says_why_in_the_record(tmp_path: Path, role: str, kind: str) -> None:
    """Its exit status (or that it hung) and its last stderr lines reach the one-line
    answer, the record's reason and its vswitchd_logs, and the log; the old one serves."""
    body, status, said = FAILURES[kind]
    with make_rig(tmp_path, db_env="LIVE_DB") as rig:
        bad = fake_binary(tmp_path, f"{role}-{kind}",
                          f'if [ "$1" != --version ] && {IN_ROLE[role]}; then\n{body}\nfi\n'
                          'exec "$REAL" "$@"')
        before, old = raw_state(rig), one_serving(rig)
        code, result = rig.reload("--vswitchd", str(bad))
        assert code == 1, result
        assert result["reason"].startswith("client failed" if role == "rehearsal"
                                           else "standby failed"), result["reason"]
        record = last_record(rig)
        for text in (result["reason"], record["reason"]):
            assert status in text and said in text, text
            assert "\n" not in text and len(text) < 1000
        assert said in record["vswitchd_logs"][role]["stderr"], record["vswitchd_logs"]
        log = rig.log_path.read_text()
        assert "upgrade.vswitchd_logs" in log and said in log
        assert one_serving(rig) == old
        same_raw(rig, before)


def test_a_healthy_reload_summarises_both_new_vswitchds_logs(rig: Rig) -> None:
    """The rehearsal's and the standby's logs (off the journal) are summarised in the record
    (counts by level, WARN/ERR lines verbatim) and in one log entry with the upgrade's id."""
    code, result = rig.reload()
    assert code == 0, result
    logs = last_record(rig)["vswitchd_logs"]
    assert logs == result["record"]["vswitchd_logs"]
    for role in ("rehearsal", "standby"):
        assert logs[role]["counts"].get("INFO", 0) > 10, logs[role]
        assert len(logs[role]["lines"]) <= 20
    # The standby's wait on the OVSDB lock: an ERR line kept in the record, not the journal.
    assert any("another ovs-vswitchd process is running" in line
               for line in logs["standby"]["lines"]), logs["standby"]
    entries = [ln for ln in rig.log_path.read_text().splitlines()
               if "upgrade.vswitchd_logs" in ln]
    assert len(entries) == 1 and result["record"]["id"] in entries[0], entries


def test_state_and_token_files_are_created_private(rig: Rig, tmp_path: Path) -> None:
    """The snapshot, the token, the in-flight record and the history are created 0600 by
    the open() itself (seen by strace on the supervisor and its children): no window in
    which others may read them, whatever the umask."""
    import re
    import shutil

    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and this test needs strace")
        pytest.skip("needs strace; CI is unset, so skipping")
    trace = tmp_path / "strace.out"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=open,openat,creat",
                               "-o", str(trace), "-p", str(rig.supervisor.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)  # attached
        code, result = rig.reload()
        assert code == 0, result
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
    state = rig.cfg.ovsndu.state_dir
    created = [line for line in trace.read_text().splitlines()
               if "O_CREAT" in line and state in line
               and re.search(r"snapshot\.json|/token\"|inflight|history\.jsonl", line)]
    assert any("snapshot.json" in c for c in created) and any("token" in c for c in created)
    loose = [c for c in created if not re.search(r"O_CREAT[^)]*, 0600( <unfinished|\))", c)]
    assert not loose, loose
