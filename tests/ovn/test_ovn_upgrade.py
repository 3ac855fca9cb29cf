"""Live upgrades of a vswitchd that OVN drives, under churn (issue 11, real world).

A private OVN stack (NB/SB ovsdb-servers, ovn-northd, ovn-controller) owns br-int of a
netdev sandbox adopted by a real ``ovsndu supervise``.  During every reload:
200+ new UDP connections a second A→B, each committed by OVN's allow-related ACL;
50 new MACs a second from A; new connections B→A, which the ACLs forbid; an
established TCP download from B through the load balancer's VIP and the ACLs.

Each test gathers every property it checks before asserting, so one run names all
that fail.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ovsndu.errors import OvsnduError
from ovsndu.ovs.unixctl import pid_alive
from ovsndu.testing.ovn import BRIDGE, VIP, VIP_PORT
from ovsndu.testing.workload import Churn
from tests.ovn.conftest import OvnRig

pytestmark = pytest.mark.ovn

RATE = 220.0           # new connections a second (the issue asks for >= 200)
MAC_RATE = 50.0        # new source MACs a second
RELOADS = 5           # the issue: 5/5 reloads commit on the OVN stack under churn
# New connections sent less than this after the new ACL showed up in br-int may still
# pass: they can hit a datapath flow cached before the rule came (OVS revalidates
# its datapath flows asynchronously, within milliseconds).
REVALIDATION_S = 0.02
VICTIM_PORT = 7200
DROP_VICTIM = ("pg_a", "from-lport", 2000, f"inport == @pg_a && udp.dst == {VICTIM_PORT}",
               "drop")


def _churn(r: OvnRig, **extra: Any) -> Churn:
    return Churn(r.ovn.a, r.ovn.b, r.work, rate=RATE, mac_rate=MAC_RATE, tcp_host=VIP,
                 tcp_port=VIP_PORT, **extra)


def _serving_problems(r: OvnRig, when: str) -> list[str]:
    """The supervisor names the vswitchd that holds the pidfile, and it is alive."""
    status = r.rig.status()
    pid = (status.get("vswitchd") or {}).get("pid")
    try:
        holder = int((r.rig.sb.rundir / "ovs-vswitchd.pid").read_text())
    except (OSError, ValueError):
        holder = None
    if pid is None or pid != holder or not pid_alive(pid):
        return [f"{when}: status names vswitchd {pid}, the pidfile names {holder}"]
    return []


def _settled_table(r: OvnRig) -> tuple[list[str], list[str]]:
    """br-int once ovn-controller reports the current northbound config installed."""
    r.ovn.wait_installed(timeout=60)
    time.sleep(1.0)
    r.ovn.wait_installed(timeout=60)
    return r.ovn.flows(), r.ovn.groups()


def _differences(what: str, got: tuple[list[str], list[str]],
                 want: tuple[list[str], list[str]]) -> list[str]:
    problems = []
    for kind, have, wanted in (("flows", got[0], want[0]), ("groups", got[1], want[1])):
        if have != wanted:
            extra = sorted(set(have) - set(wanted))
            missing = sorted(set(wanted) - set(have))
            problems.append(f"{what}: {kind} differ from what ovn-controller wants: "
                            f"{len(extra)} extra {extra[:2]}, {len(missing)} missing "
                            f"{missing[:2]}")
    return problems


def _table_problems(r: OvnRig, restored: tuple[list[str], list[str]] | None = None
                    ) -> list[str]:
    """br-int's raw table equals what a freshly started ovn-controller installs: once
    ovn-controller has caught up, and (*restored*) as ovsndu left it before ovn-controller
    could reconnect to the new vswitchd."""
    settled = _settled_table(r)
    want = r.ovn.wanted()
    problems = _differences("br-int after the reload", settled, want)
    if restored is not None:
        problems += _differences("br-int as ovsndu restored it", restored, want)
    return problems


def _traffic_problems(counters: dict[str, Any]) -> list[str]:
    problems = []
    rate = counters["new_connections_per_s"]
    if rate < 200:
        problems.append(f"churn too slow to test anything: {rate:.0f} new connections/s")
    if counters["new_connections_delivered"] == 0:
        problems.append("no new connection went through the ACL")
    if counters["forbidden_delivered"]:
        problems.append(f"{counters['forbidden_delivered']} forbidden packets delivered")
    if not counters["tcp_survived"]:
        why = counters["tcp_error"] or "stalled"
        problems.append(f"TCP through the VIP and the ACL broke: {why}")
    return problems


def test_reloads_under_churn(ovn_rig: OvnRig) -> None:
    """Every reload commits; TCP survives; nothing forbidden passes; the supervisor knows
    who serves; br-int ends as ovn-controller wants it."""
    r = ovn_rig
    churn = _churn(r)
    churn.start()
    problems: list[str] = []
    outcomes = []
    try:
        time.sleep(1.0)
        restored = None
        timeline: list[tuple[float, float]] = []
        for k in range(RELOADS):
            last = k == RELOADS - 1
            if last:  # what ovsndu alone puts into the new vswitchd, ovn-controller frozen
                r.ovn.pause_controller()
            began = time.monotonic()
            code, result = r.rig.reload()
            timeline.append((round(began, 3), round(time.monotonic(), 3)))
            if last:
                restored = (r.ovn.flows(), r.ovn.groups())
                r.ovn.resume_controller()
            outcomes.append((code, result.get("reason") or result.get("stderr")))
            if code != 0:
                problems.append(f"reload {k + 1}: exit {code}: {outcomes[-1][1]}")
            problems += _serving_problems(r, f"after reload {k + 1}")
            time.sleep(1.0)
    finally:
        counters = churn.stop()
    problems += _traffic_problems(counters)
    problems += _table_problems(r, restored)
    print(f"outcomes {outcomes}; reloads (monotonic) {timeline}; traffic {counters}")
    assert not problems, "\n".join(problems)


def _watch_rule(r: OvnRig, needle: str, found: list[float], stop: threading.Event) -> None:
    """Poll br-int until a flow containing *needle* appears; append the time the dump that
    showed it returned (the rule was in the table before that) and freeze ovn-controller,
    so that whatever br-int holds after the reload is ovsndu's doing."""
    while not stop.is_set():
        try:
            out = r.rig.sb.ofctl(BRIDGE, "dump-flows", options=("--no-stats",))
        except OvsnduError:  # between two vswitchds, or its socket not published yet
            out = ""
        if needle in out:
            found.append(time.monotonic())
            time.sleep(0.1)  # the rest of that change's flow mods (one main-loop iteration)
            r.ovn.pause_controller()
            return
        time.sleep(0.02)


def _reload_with(r: OvnRig, phase: str, action: Callable[[], None]) -> tuple[int, list[str]]:
    """``ovsndu reload``; run *action* once the reload reports that *phase* started."""
    proc = subprocess.Popen([sys.executable, "-m", "ovsndu", "reload", "--config",
                             str(r.rig.cfg_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines, done = [], False
    for line in proc.stdout:
        lines.append(line.rstrip())
        if not done and line.split() and line.split()[0] == phase and "..." in line:
            action()
            done = True
    code = proc.wait(timeout=300)
    if not done:
        lines.append(f"(phase {phase} never started: the action did not run)")
    return code, lines


@pytest.mark.parametrize("phase", ["client", "standby", "handover"])
def test_acl_added_during_reload_never_leaks(ovn_rig: OvnRig, phase: str) -> None:
    """An OVN ACL written while the upgrade runs forbids new connections from the moment it
    is in br-int (old or new vswitchd) on: none of them is delivered; and the new vswitchd
    holds it even before ovn-controller reconnects (frozen from the moment it was seen)."""
    r = ovn_rig
    churn = _churn(r, victim_port=VICTIM_PORT)
    churn.start()
    found: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_rule, args=(r, f"tp_dst={VICTIM_PORT}", found,
                                                         stop), daemon=True)
    added: list[float] = []
    problems: list[str] = []
    started = time.monotonic()
    try:
        time.sleep(1.0)
        watcher.start()

        def add_acl() -> None:
            added.append(time.monotonic())
            r.ovn.add_acl(*DROP_VICTIM)

        code, lines = _reload_with(r, phase, add_acl)
        watcher.join(timeout=30)
        restored = (r.ovn.flows(), r.ovn.groups()) if found else None
        if found:
            r.ovn.resume_controller()
        if code != 0:
            problems.append(f"reload exit {code}: {lines[-3:]}")
        problems += _serving_problems(r, "after the reload")
        r.ovn.wait_installed(timeout=60)
        time.sleep(1.5)
    finally:
        stop.set()
        counters = churn.stop()
    arrivals = churn.victim_arrivals()
    if not added:
        problems.append(f"the ACL was never added: {lines}")
    if not found:
        problems.append("the new ACL never showed up in br-int")
    else:
        leaked = [seq for seq, sent, _ in arrivals if sent > found[0] + REVALIDATION_S]
        if leaked:
            problems.append(f"{len(leaked)} new connections the ACL forbids were delivered "
                            f"after it was in br-int (first seq {leaked[0]})")
        if not any(sent < found[0] for _, sent, _ in arrivals):
            problems.append("no victim connection got through before the ACL: probe broken")
    problems += _traffic_problems(counters)
    problems += _table_problems(r, restored)
    when = {"added_s": added[0] - started if added else None,
            "in_br_int_s": found[0] - started if found else None}
    print(f"phase {phase}: {when}; reload {lines}; traffic {counters}")
    assert not problems, "\n".join(problems)
