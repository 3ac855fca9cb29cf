"""Live upgrades of a vswitchd that OVN drives, under churn (issue 11, real world).

A private OVN stack (NB/SB ovsdb-servers, ovn-northd, ovn-controller) owns br-int of a
netdev sandbox adopted by a real ``ovsndu supervise``.  During every reload:
200+ new UDP connections a second A→B, each committed by OVN's allow-related ACL;
50 new MACs a second from A; new connections B→A, which the ACLs forbid; an
established TCP download from B through the load balancer's VIP and the ACLs.
``test_conntrack_complete_through_the_lb``: 220+ new UDP connections a second through
the load balancer (each DNAT'd by a ``nat(dst=)`` group bucket): OVN's pipeline uses NAT,
and conntrack is frozen for the final read all the same (docs/upgrade.md, "The
conntrack freeze"); every entry the old process held at the stop is in the new one.

Each test gathers every property it checks before asserting, so one run names all
that fail.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from ovsndu.errors import OvsnduError
from ovsndu.ovs.sandbox import _die_with_parent
from ovsndu.ovs.unixctl import pid_alive
from ovsndu.testing.ovn import BRIDGE, UDP_VIP_PORT, VIP, VIP_PORT, lb_connections
from ovsndu.testing.workload import Churn, read_counters
from tests.ovn.conftest import OvnRig
from tests.upgrade.test_churn import _handover

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


NAT_RATE = 220.0  # new connections a second through the load balancer
NAT_RELOADS = 3
# An unanswered UDP entry lives 60 s in OVS 3.1 (udp_first); older ones may have ended.
UDP_FIRST_S = 60.0
NAT_NOTE = ("new connections' first packets passed without a conntrack entry and without "
            "NAT during the freeze")


def _ct_entries(dump: str) -> dict[str, int]:
    """A raw ``dpctl/dump-conntrack -s``: each entry's identity (protocol, original
    tuple, zone) and its remaining timeout in seconds; raises on a line it cannot read."""
    out = {}
    for line in dump.splitlines():
        if not line.strip():
            continue
        m = re.match(r"(\w+),orig=\(([^)]*)\)", line.strip())
        zone = re.search(r",zone=(\d+)", line)
        timeout = re.search(r",timeout=(\d+)", line)
        if m is None or timeout is None:
            raise AssertionError(f"unexpected dump-conntrack line: {line!r}")
        orig = re.sub(r",(packets|bytes)=\d+", "", m.group(2))
        out[f"{m.group(1)},orig=({orig}),zone={zone.group(1) if zone else 0}"] = int(
            timeout.group(1))
    return out


def _nat_record_problems(k: int, record: dict[str, Any]) -> list[str]:
    """The freeze happened on OVN's NAT pipeline and the record names what it cost."""
    marks, anomalies = record.get("marks", {}), record.get("anomalies", [])
    problems = []
    if not ("ct_frozen" in marks and marks.get("catchup_ct_frozen_ms", 0) > 0
            and "catchup.ct_refused" in marks):
        problems.append(f"reload {k}: conntrack not frozen for the final read: {marks}")
    named = [a for a in anomalies if a.startswith(NAT_NOTE) and "uses NAT: br-int" in a]
    if len(named) != 1 or f"{int(marks.get('catchup.ct_refused', -1))} commits" not in named[0]:
        problems.append(f"reload {k}: the NAT freeze is not named with its refusals: "
                        f"{anomalies}, refused {marks.get('catchup.ct_refused')}")
    if any("not carried" in a for a in anomalies):
        problems.append(f"reload {k}: anomalies name state not carried: {anomalies}")
    return problems


def test_conntrack_complete_through_the_lb(ovn_rig: OvnRig) -> None:
    """Reloads under 220 new connections/s through OVN's load balancer (a NAT pipeline):
    each commits with conntrack frozen for the final read and the freeze named in the
    record; every conntrack entry of a raw dump taken before the reload is in the new
    process unless its timeout ran out, and so is every load-balanced connection sent up
    to 50 ms before the freeze (both of its entries: the DNAT'd one and B's); TCP through
    the VIP survives and a new one is served; new connections are DNAT'd afterwards."""
    r = ovn_rig
    a, b, work = r.ovn.a, r.ovn.b, r.work
    work.mkdir(parents=True, exist_ok=True)
    r.ovn.add_udp_lb()
    procs: list[subprocess.Popen[bytes]] = []

    def probe(ep: Any, *argv: str) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen(ep.argv([sys.executable, "-m", *argv]),
                                      preexec_fn=_die_with_parent))
        return procs[-1]

    def sent() -> list[tuple[float, int]]:
        lines = (work / "nat.txt").read_text().splitlines()
        return [(float(t), int(port)) for t, _, port in (ln.partition(" ") for ln in lines)
                if port]

    def tcp(name: str) -> tuple[int, str]:
        c = read_counters(work / name)
        return int(c.get("bytes", 0)), str(c.get("error", ""))

    problems: list[str] = []
    gaps: list[tuple[float, float]] = []
    dumps = r.rig.sb.appctl
    try:
        probe(b, "ovsndu.testing.probe", "tcp-push", str(5001))
        time.sleep(0.5)
        probe(a, "ovsndu.testing.workload", "tcp-watch", VIP, str(VIP_PORT),
              str(work / "tcp.txt"))
        began = time.monotonic()
        probe(a, "ovsndu.testing.churn", "udp", VIP, str(UDP_VIP_PORT), str(NAT_RATE),
              str(work / "nat.txt"))
        time.sleep(2.0)
        for k in range(1, NAT_RELOADS + 1):
            tcp_before = tcp("tcp.txt")[0]
            before, dumped = _ct_entries(dumps("dpctl/dump-conntrack", "-s")), time.monotonic()
            code, result = r.rig.reload()
            after_text = dumps("dpctl/dump-conntrack", "-s")
            after, elapsed = _ct_entries(after_text), time.monotonic() - dumped
            if code != 0:
                problems.append(f"reload {k}: exit {code}: {result.get('reason')}")
                break
            record = result["record"]
            problems += _nat_record_problems(k, record)
            ended = [e for e, t in before.items() if t <= elapsed + 2]  # ran out meanwhile
            lost = sorted(set(before) - set(after) - set(ended))
            if lost:
                problems.append(f"reload {k}: {len(lost)} of {len(before)} entries of the raw "
                                f"dump before the reload are missing: {lost[:3]}")
            start, end = _handover(record)
            # Sent up to 50 ms before the freeze (not frozen: before the stop, which
            # fails — the read's window — as it should).
            marks = record["marks"]
            cut = start + marks.get("ct_frozen", marks.get("old_stopped", 0)) / 1000 - 0.05
            want = {port for t, port in sent() if t < cut
                    and t > time.monotonic() - UDP_FIRST_S + 5
                    and not any(x - 0.05 <= t <= y + 0.05 for x, y in gaps)}
            missing = want - lb_connections(after_text)
            if len(want) < 200 or missing:
                problems.append(f"reload {k}: {len(missing)} of {len(want)} connections "
                                f"through the VIP sent before the freeze are missing "
                                f"{sorted(missing)[:5]}")
            gaps.append((start, end))
            print(f"reload {k}: {len(before)} entries before, {len(after)} after, "
                  f"{len(ended)} ran out, checked {len(want)} LB connections; marks "
                  f"{ {m: v for m, v in record['marks'].items() if 'ct' in m} }")
            deadline = time.monotonic() + 5  # TCP backs off over the gap
            while tcp("tcp.txt")[0] <= tcp_before and time.monotonic() < deadline:
                time.sleep(0.1)
            if tcp("tcp.txt")[0] <= tcp_before or tcp("tcp.txt")[1]:
                problems.append(f"reload {k}: TCP through the VIP broke: {tcp('tcp.txt')}")
            time.sleep(1.0)
        # The load balancer in the new process: a new TCP connection through the VIP is
        # served, and new UDP connections are DNAT'd to B.
        probe(a, "ovsndu.testing.workload", "tcp-watch", VIP, str(VIP_PORT),
              str(work / "tcp-new.txt"))
        time.sleep(2.0)
        if tcp("tcp-new.txt")[0] == 0 or tcp("tcp-new.txt")[1]:
            problems.append(f"a new TCP connection through the VIP: {tcp('tcp-new.txt')}")
        fresh = {port for t, port in sent() if gaps and gaps[-1][1] + 1.5 < t
                 < time.monotonic() - 0.2}
        if not fresh or fresh - lb_connections(dumps("dpctl/dump-conntrack")):
            problems.append(f"new UDP connections through the VIP are not DNAT'd to B "
                            f"({len(fresh)} sent)")
        seconds = sent()[-1][0] - began
        if len(sent()) / seconds < 200:
            problems.append(f"churn too slow: {len(sent()) / seconds:.0f} connections/s")
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert not problems, "\n".join(problems)
