"""``systemctl reload ovs-vswitchd`` is a live upgrade, in a real systemd 252.

One container (``box``, see container.py) serves the whole module and the tests run in
order, each leaving the unit the way the next expects: started by the drop-in, populated
with the sample state, reloaded (committed), reloaded with a crashing binary (rolled
back), read over D-Bus, stopped, uninstalled and reinstalled, started and restarted.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ovsndu.model import CATEGORIES
from tests.systemd.container import OVSNDU, Container, lines_json

UNIT = "ovs-vswitchd.service"
BUS = ("org.ovsndu.Supervisor1", "/org/ovsndu/Supervisor1", "org.ovsndu.Supervisor1")
PHASES = ["preflight", "snapshot", "client", "validation", "standby", "handover", "commit"]
BROKEN = "/usr/local/sbin/ovs-vswitchd-broken"
BROKEN_SCRIPT = """#!/bin/sh
# A new ovs-vswitchd that reports the real version and crashes when started.
case "$1" in --version) exec /usr/sbin/ovs-vswitchd "$@" ;; esac
echo "ovs-vswitchd-broken: crashing on purpose" >&2
kill -SEGV $$
"""
POPULATE = ("from ovsndu.ovs.sandbox import Sandbox\n"
            "from ovsndu.testing.sample import populate\n"
            "populate(Sandbox('/var/run/openvswitch'))\n")

pytestmark = pytest.mark.systemd


# --- helpers ---------------------------------------------------------------------------------
def snapshot(box: Container, name: str) -> dict[str, Any]:
    """``ovsndu snapshot`` of the system OVS, kept in /root/NAME.json inside."""
    box.ovsndu("snapshot", "--rundir", "/var/run/openvswitch", "--format", "json",
               "-o", f"/root/{name}.json")
    data: dict[str, Any] = json.loads((box.merged / "root" / f"{name}.json").read_text())
    return data


def same_state(box: Container, a: str, b: str) -> None:
    """``ovsndu diff`` says every category's digest matches."""
    r = box.ovsndu("diff", f"/root/{a}.json", f"/root/{b}.json", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def status(box: Container) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(box.ovsndu("status", "--json").stdout)
    return out


def get_property(box: Container, name: str) -> str:
    """``busctl get-property`` on the supervisor's object: e.g. ``s "idle"``."""
    return box.run("busctl", "get-property", *BUS, name).stdout.strip()


def journal(box: Container) -> list[dict[str, Any]]:
    """The unit's journal, as JSON entries."""
    box.run("journalctl", "--sync", check=False)
    return lines_json(box.run("journalctl", "-u", UNIT, "-o", "json", "--no-pager",
                              timeout=60).stdout)


class Watch:
    """Polls the unit's ActiveState/MainPID and the bus's Phase while a reload runs."""

    def __init__(self, box: Container) -> None:
        self.box = box
        self.states: list[tuple[str, str]] = []
        self.phases: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            props = self.box.show(UNIT, "ActiveState", "MainPID")
            self.states.append((props["ActiveState"], props["MainPID"]))
            r = self.box.run("busctl", "get-property", *BUS, "Phase", check=False)
            if r.returncode == 0:
                self.phases.add(r.stdout.strip().removeprefix("s ").strip('"'))

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def processes(box: Container) -> list[str]:
    """``comm args`` of every process in the container."""
    return box.run("ps", "-eo", "comm=,args=").stdout.splitlines()


# --- the tests, in order ---------------------------------------------------------------------
def test_unit_starts_with_the_supervisor_as_main_process(box: Container) -> None:
    props = box.show(UNIT, "Type", "ActiveState", "SubState", "MainPID", "NotifyAccess",
                     "DropInPaths", "WatchdogUSec", "StatusText", "ExecReload", "Requires",
                     "Wants", "After", "PartOf", "ReloadPropagatedFrom", "FragmentPath")
    assert props["Type"] == "notify"
    assert props["NotifyAccess"] == "main"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert props["DropInPaths"].endswith("ovs-vswitchd.service.d/ovsndu.conf")
    assert props["WatchdogUSec"] == "30s"
    assert "reload" in props["ExecReload"] and OVSNDU in props["ExecReload"]
    # ovsndu's full unit: ovsdb-server's restart/reload does not reach vswitchd
    assert props["FragmentPath"] == "/etc/systemd/system/ovs-vswitchd.service"
    assert "ovsdb-server.service" not in props["Requires"].split()
    assert "ovsdb-server.service" in props["Wants"].split()
    assert props["PartOf"] == "" and props["ReloadPropagatedFrom"] == ""
    assert "ovsdb-server.service" in props["After"].split()
    assert props["StatusText"].startswith("idle; vswitchd pid")
    main = int(props["MainPID"])
    cmdline = (Path(f"/proc/{box.leader}/root/proc/{main}/cmdline")).read_bytes()
    assert b"supervise" in cmdline
    assert box.show("ovsdb-server.service", "ActiveState")["ActiveState"] == "active"
    st = status(box)
    assert st["phase"] == "idle"
    assert st["systemd"] == {"unit": UNIT, "active_state": "active", "sub_state": "running",
                             "main_pid": main}
    # install-systemd again: nothing to change, daemon-reload done, still the same process
    out = box.ovsndu("install-systemd").stdout
    assert out.count("unchanged:") == 5 and "daemon-reload: done" in out, out
    assert box.show(UNIT, "MainPID")["MainPID"] == str(main)


def test_systemctl_reload_is_a_live_upgrade(box: Container) -> None:
    box.python(POPULATE)
    before = snapshot(box, "before")
    assert all(before["categories"][c]["count"] > 0 for c in CATEGORIES), before["categories"]
    main = box.show(UNIT, "MainPID")["MainPID"]
    old_vswitchd = before["vswitchd"]["pid"]
    monitor = subprocess.Popen(
        box.argv("sh", "-c", "echo $$ > /run/ovsndu-test-monitor.pid; "
                 "exec busctl --json=short monitor org.ovsndu.Supervisor1"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.5)
    started = time.monotonic()
    with Watch(box) as watch:
        r = box.run("systemctl", "reload", UNIT, check=False, timeout=300)
    took = time.monotonic() - started
    box.run("sh", "-c", "kill $(cat /run/ovsndu-test-monitor.pid)", check=False)
    signals = monitor.communicate(timeout=30)[0]
    assert r.returncode == 0, r.stderr
    print(f"\nsystemctl reload (committed) took {took:.1f} s")
    after = snapshot(box, "after")
    same_state(box, "before", "after")
    assert after["vswitchd"]["pid"] != old_vswitchd
    # the unit stayed active (reloading while the upgrade ran) with the same main process
    assert watch.states, "the watcher saw nothing"
    assert {s for s, _ in watch.states} <= {"active", "reloading"}, watch.states
    assert {pid for _, pid in watch.states} == {main}
    assert watch.phases - {"idle"}, f"no upgrade phase seen over D-Bus: {watch.phases}"
    assert box.show(UNIT, "ActiveState", "SubState") == {"ActiveState": "active",
                                                         "SubState": "running"}
    st = status(box)
    assert st["vswitchd"]["pid"] == after["vswitchd"]["pid"]
    assert st["last_upgrade"]["outcome"] == "committed"
    # PropertiesChanged went out for the phases
    changes = [json.loads(line) for line in signals.splitlines() if line.startswith("{")]
    changed_phases = {
        m["payload"]["data"][1]["Phase"]["data"] for m in changes
        if m.get("member") == "PropertiesChanged" and "Phase" in m["payload"]["data"][1]}
    assert {"preflight", "commit", "idle"} <= changed_phases, changed_phases


def test_journal_holds_every_phase_with_its_fields(box: Container) -> None:
    upgrade_id = status(box)["last_upgrade"]["id"]
    entries = [e for e in journal(box) if e.get("OVSNDU_UPGRADE_ID") == upgrade_id]
    assert entries, "no journal entry carries the upgrade id"
    for e in entries:
        assert e["_SYSTEMD_UNIT"] == UNIT and e["SYSLOG_IDENTIFIER"] == "ovsndu"
        assert e.get("CODE_FILE", "").endswith(".py"), e
    for phase in PHASES:
        kinds = {e.get("OVSNDU_EVENT") for e in entries if e.get("OVSNDU_PHASE") == phase}
        assert {"phase_started", "phase_done"} <= kinds, (phase, kinds)
    (finished,) = [e for e in entries if e["MESSAGE"].startswith("upgrade.finished")]
    assert finished["OVSNDU_OUTCOME"] == "committed"
    # Under systemd too the old process's packet sockets and memory were held across
    # its kill (ovs/exit_hold.py): nothing in the unit's sandboxing refuses it.
    (hold,) = [e for e in entries if e["MESSAGE"].startswith("upgrade.exit_hold")]
    assert hold["OVSNDU_MEMORY"] == "True" and "OVSNDU_REASON" not in hold, hold
    # ExecReload's own output (the phase lines of ovsndu reload) is the unit's too
    stdout = [e for e in journal(box) if e.get("_TRANSPORT") == "stdout"
              and e["MESSAGE"].startswith("committed")]
    assert stdout, "ovsndu reload's result line is not in the unit's journal"


def test_failing_new_binary_fails_the_reload_and_keeps_the_original(box: Container) -> None:
    box.write(BROKEN, BROKEN_SCRIPT, 0o755)
    before = snapshot(box, "before_broken")
    main = box.show(UNIT, "MainPID")["MainPID"]
    box.write_config(BROKEN)
    try:
        with Watch(box) as watch:
            r = box.run("systemctl", "reload", UNIT, check=False, timeout=300)
    finally:
        box.write_config("/usr/sbin/ovs-vswitchd")
    assert r.returncode != 0, "systemctl reload succeeded with a crashing binary"
    assert {s for s, _ in watch.states} <= {"active", "reloading"}, watch.states
    assert box.show(UNIT, "ActiveState", "SubState", "MainPID") == {
        "ActiveState": "active", "SubState": "running", "MainPID": main}
    after = snapshot(box, "after_broken")
    assert after["vswitchd"]["pid"] == before["vswitchd"]["pid"]
    same_state(box, "before_broken", "after_broken")
    st = status(box)
    assert st["last_upgrade"]["outcome"] == "rolled_back"
    upgrade_id = st["last_upgrade"]["id"]
    entries = [e for e in journal(box) if e.get("OVSNDU_UPGRADE_ID") == upgrade_id]
    (rollback,) = [e for e in entries if e["MESSAGE"].startswith("upgrade.rollback")]
    assert rollback["OVSNDU_PHASE"] == "rollback"
    assert rollback["OVSNDU_EVENT"] == "rollback_started"
    assert rollback["OVSNDU_REASON"], rollback
    assert rollback["PRIORITY"] == "4"
    (finished,) = [e for e in entries if e["MESSAGE"].startswith("upgrade.finished")]
    assert finished["OVSNDU_OUTCOME"] == "rolled_back"
    assert finished["OVSNDU_REASON"] == rollback["OVSNDU_REASON"]
    failed = [e for e in entries if e.get("OVSNDU_EVENT") == "phase_failed"]
    assert failed and all(e["OVSNDU_REASON"] for e in failed)


def test_busctl_reads_the_supervisor(box: Container) -> None:
    assert get_property(box, "Phase") == 's "idle"'
    assert get_property(box, "LastOutcome") == 's "rolled_back"'
    pid = status(box)["vswitchd"]["pid"]
    assert get_property(box, "VswitchdPid") == f"u {pid}"
    assert "Open vSwitch" in get_property(box, "Version")
    intro = box.run("busctl", "introspect", *BUS).stdout
    for member in (".Reload", ".Phase", ".LastOutcome", ".VswitchdPid", ".Version"):
        assert member in intro, intro
    # Reload over D-Bus, with the crashing binary: the outcome comes back as the answer
    r = box.run("busctl", "--timeout=300", "call", *BUS, "Reload", "s", BROKEN, timeout=320)
    assert r.stdout.startswith('iss 1 "rolled_back"'), r.stdout
    assert get_property(box, "VswitchdPid") == f"u {pid}"
    assert get_property(box, "LastOutcome") == 's "rolled_back"'


def test_systemctl_stop_leaves_no_process_behind(box: Container) -> None:
    main = box.show(UNIT, "MainPID")["MainPID"]
    box.run("systemctl", "stop", UNIT, timeout=300)
    props = box.show(UNIT, "ActiveState", "Result", "MainPID")
    assert props == {"ActiveState": "inactive", "Result": "success", "MainPID": "0"}
    left = [p for p in processes(box)
            if p.startswith("ovs-vswitchd") or "supervise" in p or f" {main} " in p]
    assert not left, left
    assert box.run("busctl", "status", BUS[0], check=False).returncode != 0
    # (as with the stock units, openvswitch-switch.service Requires= ovs-vswitchd and
    # ovsdb-server is PartOf= it: stopping ovs-vswitchd stops the switch and the database)


def test_uninstall_and_install_systemd(box: Container) -> None:
    out = box.ovsndu("uninstall-systemd").stdout
    assert out.count("changed:") == 5 and "daemon-reload: done" in out, out
    assert box.show(UNIT, "Type", "DropInPaths") == {"Type": "forking", "DropInPaths": ""}
    assert box.ovsndu("uninstall-systemd").stdout.count("unchanged:") == 5
    out = box.ovsndu("install-systemd").stdout
    assert out.count("changed:") == 5, out
    assert box.show(UNIT, "Type")["Type"] == "notify"


def test_systemctl_start_and_restart(box: Container) -> None:
    box.run("systemctl", "start", UNIT, timeout=300)
    first = box.show(UNIT, "ActiveState", "MainPID")
    assert first["ActiveState"] == "active"
    box.run("systemctl", "restart", UNIT, timeout=300)
    second = box.show(UNIT, "ActiveState", "SubState", "MainPID")
    assert (second["ActiveState"], second["SubState"]) == ("active", "running")
    assert second["MainPID"] != first["MainPID"]
    st = status(box)
    assert st["phase"] == "idle"
    assert st["systemd"]["main_pid"] == int(second["MainPID"])
    assert box.run("ovs-vsctl", "br-exists", "br0", check=False).returncode == 0
    supervisors = [p for p in processes(box) if "supervise" in p]
    vswitchds = [p for p in processes(box) if p.startswith("ovs-vswitchd")]
    assert len(supervisors) == 1 and len(vswitchds) == 1, (supervisors, vswitchds)
    deadline = time.monotonic() + 10
    while get_property_or_none(box, "Phase") != 's "idle"':
        assert time.monotonic() < deadline, "the restarted supervisor did not take its bus name"
        time.sleep(0.2)


def get_property_or_none(box: Container, name: str) -> str | None:
    r = box.run("busctl", "get-property", *BUS, name, check=False)
    return r.stdout.strip() if r.returncode == 0 else None
