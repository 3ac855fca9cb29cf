"""`apt-get install` of openvswitch-switch is a live upgrade under ovsndu (real systemd 252).

The package is Debian's own openvswitch-switch .deb (the host's apt cache, or the copy
scripts/setup downloads into .cache/debs), unpacked with ``dpkg-deb -R``, its version
bumped in DEBIAN/control and packed again with ``dpkg-deb -b``; a second one carries a
broken ovs-vswitchd.  Its maintainer scripts stop ovsdb-server/ovs-vswitchd (preinst) and
restart openvswitch-switch (postinst) through deb-systemd-invoke; ovsndu's policy-rc.d
turns that into a live upgrade.  Judged by OVS's own tools (ovs-ofctl dumps), ovsndu's
snapshot digests, systemd's view of the unit, apt's output and ``ovsndu status``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.systemd.container import Container
from tests.systemd.test_unit import (
    POPULATE,
    UNIT,
    get_property,
    journal,
    same_state,
    snapshot,
    status,
)

ROOT = Path(__file__).resolve().parents[2]
BROKEN_VSWITCHD = """#!/bin/sh
# a broken ovs-vswitchd: it reports its version, and crashes when started
case "$1" in --version) echo "ovs-vswitchd (Open vSwitch) 3.1.0"; exit 0 ;; esac
kill -SEGV $$
"""

pytestmark = pytest.mark.systemd


def _cached_deb(package: str) -> Path:
    found = sorted(glob.glob(f"/var/cache/apt/archives/{package}_*.deb")
                   + glob.glob(str(ROOT / ".cache" / "debs" / f"{package}_*.deb")))
    if not found:
        why = f"needs a {package} .deb (scripts/setup downloads one into .cache/debs)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and this test {why}")
        pytest.skip(f"{why}; CI is unset, so skipping (in CI this fails)")
    return Path(found[-1])


def _repack(deb: Path, dest: Path, suffix: str, vswitchd: str | None = None,
            common_suffix: str = "") -> Path:
    """*deb* with its version + *suffix* (and, if given, another ovs-vswitchd) as a .deb;
    its dependency on openvswitch-common (= V) becomes V + *common_suffix*."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
        control = tree / "DEBIAN" / "control"
        lines = control.read_text().splitlines()
        version = next(ln.split(": ", 1)[1] for ln in lines if ln.startswith("Version: "))
        control.write_text("\n".join(
            f"Version: {version}{suffix}" if ln.startswith("Version: ") else
            ln.replace(f"openvswitch-common (= {version})",
                       f"openvswitch-common (= {version}{common_suffix})")
            for ln in lines) + "\n")
        if vswitchd is not None:
            binary = tree / "usr/lib/openvswitch-switch/ovs-vswitchd"
            binary.write_text(vswitchd)
            binary.chmod(0o755)
            md5 = tree / "DEBIAN" / "md5sums"  # dpkg does not check it; keep it honest
            md5.write_text("".join(ln + "\n" for ln in md5.read_text().splitlines()
                                   if "usr/lib/openvswitch-switch/ovs-vswitchd" not in ln))
        out = dest / f"{deb.name.split('_')[0]}_{version}{suffix}_amd64.deb"
        subprocess.run(["dpkg-deb", "-b", "-Zgzip", str(tree), str(out)], check=True,
                       capture_output=True)
    return out


@pytest.fixture(name="debs", scope="module")
def _debs(box: Container) -> dict[str, str]:
    dest = box.merged / "root" / "debs"
    dest.mkdir(parents=True)
    switch, common = _cached_deb("openvswitch-switch"), _cached_deb("openvswitch-common")
    return {"common": "/root/debs/" + _repack(common, dest, "+ovsndu1").name,
            "bumped": "/root/debs/" + _repack(switch, dest, "+ovsndu1", None, "+ovsndu1").name,
            "broken": "/root/debs/" + _repack(switch, dest, "+ovsndu2", BROKEN_VSWITCHD,
                                              "+ovsndu1").name}


@pytest.fixture(name="switch", scope="module")
def _switch(box: Container) -> Container:
    # A host image built by Docker has a policy-rc.d that forbids every service action;
    # install-systemd chained it behind ovsndu's, where it would still rule (as it should:
    # tests/unit/test_packaging.py).  This container plays a host where services run.
    (box.merged / "usr/sbin/policy-rc.d.ovsndu-chained").unlink(missing_ok=True)
    box.run("systemctl", "start", "openvswitch-switch", timeout=300)
    box.python(POPULATE)
    return box


def _raw(box: Container) -> dict[str, list[str]]:
    """What ovs-ofctl prints (no counters), sorted (hash order may differ)."""
    out = {}
    for what, args in (("flows", ("dump-flows", "br0", "--no-stats")),
                       ("groups", ("dump-groups", "br0")), ("meters", ("dump-meters", "br0"))):
        text = box.run("ovs-ofctl", "-O", "OpenFlow15", *args).stdout
        out[what] = sorted(text.splitlines()[1:])
    return out


def _apt(box: Container, *args: str) -> subprocess.CompletedProcess[str]:
    return box.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                   "--no-install-recommends", "-o", "Dpkg::Options::=--force-confold",
                   *args, timeout=600)


def _installed(box: Container) -> str:
    return box.run("dpkg-query", "-W", "-f=${Version}", "openvswitch-switch").stdout


def _upgrade_through_apt(box: Container, name: str, *args: str) -> str:
    before_main = box.show(UNIT, "MainPID")["MainPID"]
    old_pid = status(box)["vswitchd"]["pid"]
    raw = _raw(box)
    snapshot(box, f"{name}-before")
    r = _apt(box, *args)
    print("\n" + "\n".join(ln for ln in (r.stdout + r.stderr).splitlines()
                            if "ovsndu" in ln or "policy-rc.d" in ln or "Setting up" in ln))
    assert "ovsndu: live upgrade committed" in r.stderr + r.stdout, r.stdout + r.stderr
    props = box.show(UNIT, "ActiveState", "SubState", "MainPID")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert props["MainPID"] == before_main  # the unit was never restarted
    st = status(box)
    assert st["vswitchd"]["pid"] != old_pid  # replaced by a live upgrade
    assert st["last_upgrade"]["outcome"] == "committed"
    # what serves, what status says, what D-Bus says and what the history says agree
    assert st["last_upgrade"]["to_pid"] == st["vswitchd"]["pid"]
    assert st["last_upgrade"]["to_version"] == st["vswitchd"]["version"]
    assert get_property(box, "Version") == f's "{st["vswitchd"]["version"]}"'
    assert get_property(box, "VswitchdPid") == f"u {st['vswitchd']['pid']}"
    assert _raw(box) == raw
    snapshot(box, f"{name}-after")
    same_state(box, f"{name}-before", f"{name}-after")
    print(f"\n{name}: handover gap {st['last_upgrade'].get('handover_gap_ms')} ms")
    return r.stdout + r.stderr


def _ovsdb_pid(box: Container) -> str:
    return box.show("ovsdb-server.service", "MainPID")["MainPID"]


def test_apt_upgrade_is_a_live_upgrade(switch: Container, debs: dict[str, str]) -> None:
    """openvswitch-common and -switch upgraded together: ovsdb-server restarts alone."""
    box = switch
    box.run("systemctl", "reload", UNIT, timeout=300)  # a plain reload, for comparison
    print(f"\nsystemctl reload: handover gap "
          f"{status(box)['last_upgrade'].get('handover_gap_ms')} ms")
    db_pid = _ovsdb_pid(box)
    said = _upgrade_through_apt(box, "upgrade", debs["common"], debs["bumped"])
    assert "restarting ovsdb-server alone" in said
    assert _installed(box).endswith("+ovsndu1")
    assert box.show("ovsdb-server.service", "ActiveState")["ActiveState"] == "active"
    assert _ovsdb_pid(box) != db_pid


def test_apt_reinstall_is_a_live_upgrade(switch: Container, debs: dict[str, str]) -> None:
    """openvswitch-switch alone: ovsdb-server's binary is unchanged and keeps running."""
    db_pid = _ovsdb_pid(switch)
    said = _upgrade_through_apt(switch, "reinstall", "--reinstall", debs["bumped"])
    assert "not restarted" in said
    assert _ovsdb_pid(switch) == db_pid


def test_broken_package_installs_and_the_old_vswitchd_keeps_serving(
        switch: Container, debs: dict[str, str]) -> None:
    box = switch
    old_pid = status(box)["vswitchd"]["pid"]
    raw = _raw(box)
    r = _apt(box, debs["broken"])  # the package installs: apt succeeds
    said = r.stdout + r.stderr
    print("\n" + "\n".join(ln for ln in said.splitlines() if "ovsndu" in ln))
    assert "live upgrade ROLLED_BACK" in said and "keeps serving" in said, said
    assert _installed(box).endswith("+ovsndu2")
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"
    st = status(box)
    assert st["vswitchd"]["pid"] == old_pid
    assert st["last_upgrade"]["outcome"] == "rolled_back"
    assert _raw(box) == raw
    messages = [str(e.get("MESSAGE", "")) + str(e.get("OVSNDU_REASON", "")) for e in journal(box)]
    assert any("ROLLED_BACK" in m or "rolled_back" in m for m in messages), messages[-20:]
