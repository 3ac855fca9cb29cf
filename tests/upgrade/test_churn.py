"""Reloads on a switch that keeps changing: new connections and new MACs all the time.

A netdev bridge between two namespaces with a stateful ACL (new connections only from
A, committed in conntrack zone 1; everything allowed goes through NORMAL, so MACs are
learned).  A sends a datagram from a new source port 250 times a second and a frame
from a new MAC 50 times a second; B streams TCP to A.  Judged by OVS's own tools:
``dpctl/dump-conntrack`` and ``fdb/show`` after the reload.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ovsndu.config import Config
from ovsndu.ovs import daemon
from ovsndu.ovs.sandbox import NETDEV_ARGS, Sandbox
from ovsndu.testing.endpoints import Endpoint, add_endpoint
from tests.conftest import require_ovs
from tests.upgrade.conftest import VSWITCHD, Rig, fake_binary, live_db_prefix

UDP_RATE = 250.0
MAC_RATE = 50.0
ACL = (
    "table=0,priority=100,arp,actions=NORMAL",
    "table=0,priority=100,ip,actions=ct(table=1,zone=1)",
    "table=0,priority=10,actions=NORMAL",
    "table=1,priority=100,ct_state=+trk+new,ip,in_port=1,actions=ct(commit,zone=1),NORMAL",
    "table=1,priority=100,ct_state=+trk+est,ip,actions=NORMAL",
    "table=1,priority=0,actions=drop",
)


class Churn:
    """The rig plus its endpoints and traffic processes."""

    def __init__(self, rig: Rig, a: Endpoint, b: Endpoint, work: Path):
        self.rig, self.a, self.b, self.work = rig, a, b, work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gaps: list[tuple[float, float]] = []  # earlier handovers (monotonic)

    def start(self) -> None:
        def probe(ep: Endpoint, *args: str) -> None:
            self.procs.append(subprocess.Popen(ep.argv([sys.executable, "-m", *args])))

        probe(self.b, "ovsndu.testing.probe", "tcp-push", "5001")
        time.sleep(0.5)
        probe(self.a, "ovsndu.testing.probe", "tcp-sink", self.b.ip, "5001",
              str(self.work / "tcp.txt"))
        probe(self.a, "ovsndu.testing.churn", "udp", self.b.ip, "7000", str(UDP_RATE),
              str(self.work / "udp.txt"))
        probe(self.a, "ovsndu.testing.churn", "mac", "eth0", str(MAC_RATE),
              str(self.work / "mac.txt"))
        time.sleep(1.5)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def tcp_bytes(self) -> tuple[int, str]:
        lines = (self.work / "tcp.txt").read_text().splitlines() if (
            self.work / "tcp.txt").exists() else []
        return (int(lines[0]) if lines and lines[0].isdigit() else 0,
                lines[1] if len(lines) > 1 else "")

    def sent(self, name: str) -> list[tuple[float, str]]:
        out = []
        for line in (self.work / name).read_text().splitlines():
            t, _, what = line.partition(" ")
            if what:
                out.append((float(t), what))
        return out


@pytest.fixture(name="churn")
def _churn(tmp_path: Path) -> Iterator[Churn]:
    require_ovs()
    with Sandbox(tmp_path / "run", datapath="netdev", vswitchd_args=NETDEV_ARGS) as sb:
        sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
                 "fail_mode=secure")
        a = add_endpoint(sb, "br0", "a-sw", "10.0.0.1", 1)
        b = add_endpoint(sb, "br0", "b-sw", "10.0.0.2", 2)
        sb.ofctl("br0", "add-flows", "-", input_text="\n".join(ACL) + "\n")
        cfg = Config.from_dict({
            "ovs": {"rundir": str(sb.rundir), "db": sb.db, "vswitchd": VSWITCHD,
                    "vswitchd_args": list(NETDEV_ARGS), "netns": sb.netns or ""},
            "upgrade": {"timeout": 120},
            "ovsndu": {"state_dir": str(tmp_path / "state")},
        })
        cfg_path = tmp_path / "ovsndu.toml"
        cfg_path.write_text(cfg.to_toml())
        rig = Rig(sb, cfg, cfg_path, None, tmp_path / "supervisor.log",  # type: ignore[arg-type]
                  {"CRASH_DB": live_db_prefix(sb)})
        churn = Churn(rig, a, b, tmp_path)
        rig.start_supervisor()
        try:
            churn.start()
            yield churn
        finally:
            churn.stop()
            rig.stop_supervisor()
            for pid in rig.vswitchd_pids():
                os.kill(pid, signal.SIGKILL)


def _handover(record: dict[str, Any]) -> tuple[float, float]:
    """When the handover phase began and ended, on the monotonic clock."""
    (phase,) = [p for p in record["phases"] if p["phase"] == "handover"]
    start = datetime.fromisoformat(phase["started"]).timestamp() - (time.time() - time.monotonic())
    return start, start + phase["duration_s"]


def _conntrack_sports(rig: Rig) -> set[str]:
    text = rig.sb.appctl("dpctl/dump-conntrack", "zone=1")
    return set(re.findall(r"udp,orig=\(src=10\.0\.0\.1,dst=10\.0\.0\.2,sport=(\d+),dport=7000",
                          text))


def _fdb_macs(rig: Rig) -> set[str]:
    return {ln.split()[2] for ln in rig.sb.appctl("fdb/show", "br0").splitlines()[1:]
            if len(ln.split()) >= 3}


def _check_carried(churn: Churn, record: dict[str, Any]) -> None:
    """Every connection the old process held when it stopped is in the new process, as
    OVS's own tools print them: conntrack was frozen for the final read (no entry could
    be created from then on), so every connection sent before the freeze (with 50 ms
    for the old process to take it) must be there; every MAC seen before the handover
    began, too (none can have expired: UDP entries live 30 s, MACs 300 s, and the test is
    younger).  What was sent during an earlier reload's handover may have fallen into
    its gap (never seen by any process)."""
    start, _end = _handover(record)
    churn.gaps.append(_handover(record))
    marks = record["marks"]
    frozen = start + marks["ct_frozen"] / 1000
    assert start < frozen <= start + marks["old_stopped"] / 1000, marks
    assert marks["catchup_ct_frozen_ms"] > 0 and "catchup.ct_refused" in marks, marks

    def seen(t: float, cutoff: float) -> bool:
        return t < cutoff and not any(a - 0.05 <= t <= b + 0.05 for a, b in churn.gaps[:-1])

    want_ct = {port for t, port in churn.sent("udp.txt") if seen(t, frozen - 0.05)}
    want_mac = {mac for t, mac in churn.sent("mac.txt") if seen(t, start - 0.05)}
    have_ct, have_mac = _conntrack_sports(churn.rig), _fdb_macs(churn.rig)
    assert len(want_ct) > 200 and len(want_mac) > 40, (len(want_ct), len(want_mac))
    assert sorted(want_ct - have_ct) == [], f"{len(want_ct - have_ct)} of {len(want_ct)} lost"
    assert sorted(want_mac - have_mac) == [], f"{len(want_mac - have_mac)} MACs lost"


def _serving_pid_agrees(rig: Rig) -> int:
    pid = daemon.read_pid(rig.sb.rundir / "ovs-vswitchd.pid")
    assert pid is not None and rig.status()["vswitchd"]["pid"] == pid
    assert rig.vswitchd_pids() == [pid]
    return pid


def _limit(rig: Rig) -> str:
    return rig.sb.appctl("dpctl/ct-get-maxconns").strip()


def test_reloads_under_churn_lose_nothing(churn: Churn) -> None:
    """Two reloads while connections and MACs keep appearing: both commit, everything the
    old process held is carried (the final catch-up included, conntrack frozen for its
    read), the operator's conntrack limit too, and TCP survives."""
    churn.rig.sb.appctl("dpctl/ct-set-maxconns", "400000")
    for _ in range(2):
        before, _ = churn.tcp_bytes()
        code, result = churn.rig.reload()
        assert code == 0, result
        record = result["record"]
        # Traffic created state after the snapshot; the catch-up carried it.
        assert record["marks"].get("catchup.conntrack.added", 0) > 0, record["marks"]
        assert record["marks"].get("catchup.fdb.added", 0) > 0, record["marks"]
        _check_carried(churn, record)
        _serving_pid_agrees(churn.rig)
        assert _limit(churn.rig) == "400000"  # not OVS's default, nor the freeze's 0
        # TCP backs off over the gap (RTO doubling): give it a few seconds to go on.
        deadline = time.monotonic() + 5
        while churn.tcp_bytes()[0] <= before and time.monotonic() < deadline:
            time.sleep(0.1)
        after, error = churn.tcp_bytes()
        assert error == "" and after > before, (before, after, error)


def test_forced_failure_under_churn_then_next_reload_commits(churn: Churn,
                                                             tmp_path: Path) -> None:
    """The new vswitchd dies right after taking over: the original is restored under churn
    (exit 1, not 3), status names the process that serves, and the next reload commits."""
    bad = fake_binary(tmp_path, "crash-after", (
        'for a in "$@"; do case $a in --pidfile=*) D=$(dirname "${a#*=}");; esac; done\n'
        'if [[ "$*" == *"$CRASH_DB"* ]] && [[ "$*" == *standby.pid* ]]; then\n'
        '  ( until [ "$(cat "$D/ovs-vswitchd.pid" 2>/dev/null)" = "$$" ]; do\n'
        '      sleep 0.002; done; sleep 0.02; kill -KILL $$ ) &\n'
        'fi\nexec "$REAL" "$@"'))
    code, result = churn.rig.reload("--vswitchd", str(bad))
    assert code == 1, result
    assert result["outcome"] == "rolled_back", result
    # Traffic sent from the takeover to the end of the rollback may have been lost.
    start, _ = _handover(result["record"])
    churn.gaps.append((start, time.monotonic()))
    pid = _serving_pid_agrees(churn.rig)
    assert churn.rig.sb.appctl("version")  # the tools reach it
    code, result = churn.rig.reload()
    assert code == 0, result
    assert _serving_pid_agrees(churn.rig) != pid
    _check_carried(churn, result["record"])


def test_rollback_while_frozen_puts_the_limit_back(churn: Churn, tmp_path: Path) -> None:
    """The new vswitchd dies during the old one's last read (when its OpenFlow sockets
    are hidden), before the takeover; conntrack is frozen for that read: the rollback
    continues the original with its own conntrack limit, and new connections are
    committed again (OVS's dump-conntrack shows them)."""
    churn.rig.sb.appctl("dpctl/ct-set-maxconns", "400000")
    bad = fake_binary(tmp_path, "die-at-stop", (
        'for a in "$@"; do case $a in --pidfile=*) D=$(dirname "${a#*=}");; esac; done\n'
        'if [[ "$*" == *"$CRASH_DB"* ]] && [[ "$*" == *standby.pid* ]]; then\n'
        '  ( until [ ! -e "$D/br0.mgmt" ]; do sleep 0.001; done; kill -KILL $$ ) &\n'
        'fi\nexec "$REAL" "$@"'))
    pid = _serving_pid_agrees(churn.rig)
    code, result = churn.rig.reload("--vswitchd", str(bad))
    assert code == 1 and result["outcome"] == "rolled_back", result
    record = result["record"]
    assert "ct_frozen" in record["marks"], record["marks"]  # it was frozen, then failed
    assert record["ct_frozen"] == {}, record
    assert _serving_pid_agrees(churn.rig) == pid
    assert _limit(churn.rig) == "400000"
    thawed = time.monotonic()
    time.sleep(1)
    fresh = {port for t, port in churn.sent("udp.txt") if thawed < t < thawed + 0.8}
    assert fresh and fresh <= _conntrack_sports(churn.rig), len(fresh)


def test_the_freeze_is_bounded(churn: Churn) -> None:
    """With ``ct_freeze_max_ms`` below the read's length, conntrack is thawed before the
    read ends (new connections are not kept waiting longer); the reload still commits,
    and the journal says why the read was not frozen to the end."""
    rig = churn.rig
    rig.cfg_path.write_text(rig.cfg.replace(ct_freeze_max_ms=0.001).to_toml())
    code, result = rig.reload()
    assert code == 0, result
    marks = result["record"]["marks"]
    assert 0 < marks["catchup_ct_frozen_ms"] < marks["catchup_traffic_read_ms"], marks
    assert "the read outlasted the freeze's bound of 0.001 ms" in rig.log_path.read_text()
    rig.cfg_path.write_text(rig.cfg.replace(ct_freeze_max_ms=0).to_toml())
    code, result = rig.reload()
    assert code == 0, result
    assert "ct_frozen" not in result["record"]["marks"], result["record"]["marks"]
    assert "disabled ([upgrade] ct_freeze_max_ms = 0)" in rig.log_path.read_text()
