"""A real version upgrade: OVS 3.1 (schema 8.3.1) → Debian trixie's 3.5 (8.8.0) → 3.1.

The 3.5 binaries are patchelf'ed copies that ``scripts/setup`` (``scripts/fetch-ovs-newer``)
puts into ``.cache/ovs-3.5``; ``OVSNDU_OVS35`` names another place.  Judged by OVS's own
tools: schema versions from ``get_schema`` and ``_Server``, raw ``ovs-ofctl``/``ovs-appctl``
output, the vswitchd log, and ``ofproto/trace`` for the 3.5-only ``Mirror.filter``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.ovs import dbschema
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.restore import user_routes_only
from tests.upgrade.conftest import VSWITCHD, Rig, make_rig
from tests.upgrade.test_reload import _tools_output

ROOT = Path(__file__).resolve().parents[2]
OVS35 = Path(os.environ.get("OVSNDU_OVS35") or ROOT / ".cache" / "ovs-3.5")
V35 = OVS35 / "bin" / "ovs-vswitchd"
VSCTL35 = OVS35 / "bin" / "ovs-vsctl"


def require_ovs35() -> None:
    """Fail in CI, skip elsewhere, when the 3.5 binaries are not fetched."""
    if V35.is_file() and (OVS35 / "vswitch.ovsschema").is_file():
        return
    why = f"needs OVS 3.5 in {OVS35} (scripts/setup fetches it)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and this test {why}")
    pytest.skip(f"{why}; CI is unset, so skipping (in CI this fails)")


@pytest.fixture(name="rig35")
def _rig35(tmp_path: Path) -> Iterator[Rig]:
    require_ovs35()
    with make_rig(tmp_path) as rig:
        yield rig


def _versions(rig: Rig) -> tuple[str, str]:
    return dbschema.live_schema(rig.sb.db)[0].version, dbschema.advertised_version(rig.sb.db)


def _across_versions(tools: dict[str, list[str]]) -> dict[str, list[str]]:
    """3.5's ovs/route/show also lists the connected route of an interface address
    (``Cached: ... local``), which 3.1 does not print: the user routes are compared."""
    return {**tools, "routes": [ln for ln in tools["routes"] if not ln.startswith("Cached:")]}


def _user_digests(rig: Rig) -> dict[str, str]:
    return user_routes_only(read_snapshot(rig.sb.rundir, rig.sb.db)).digests()


def _lacks(rig: Rig) -> list[str]:
    log = (rig.sb.rundir / "ovs-vswitchd.log").read_text()
    return [ln for ln in log.splitlines() if "lacks" in ln]


def _trace(rig: Rig, proto: str) -> str:
    flow = (f"in_port=1,{proto},dl_src=50:54:00:00:00:01,dl_dst=50:54:00:00:00:02,"
            "nw_src=10.1.1.1,nw_dst=10.1.1.2")
    out = rig.sb.appctl("ofproto/trace", "br0", flow)
    (actions,) = re.findall(r"^Datapath actions: (.*)$", out, flags=re.M)
    return actions


def _mirror_port(rig: Rig) -> str:
    """The datapath port number of p3 (the mirror's output)."""
    out = rig.sb.appctl("dpif/show")
    (num,) = re.findall(r"^\s+p3 3/(\d+)", out, flags=re.M)
    return num


def test_upgrade_to_35_and_back(rig35: Rig) -> None:
    rig = rig35
    assert _versions(rig) == ("8.3.1", "8.3.1")
    tools_before = _tools_output(rig)
    digests_before = _user_digests(rig)

    # --- up: 3.1 → 3.5, the database converted online, _Server refreshed ----------------
    code, result = rig.reload("--vswitchd", str(V35))
    assert code == 0, result
    schema = result["record"]["schema"]
    assert (schema["database"], schema["advertised"], schema["target"]) == (
        "8.3.1", "8.3.1", "8.8.0")
    assert schema["converted"] is True
    assert Path(schema["backup"]).stat().st_size > 0
    assert _versions(rig) == ("8.8.0", "8.8.0")
    assert "3.5.0" in rig.status()["vswitchd"]["version"]
    assert _lacks(rig) == []
    assert _across_versions(_tools_output(rig)) == _across_versions(tools_before)
    assert _user_digests(rig) == digests_before

    # --- a 3.5-only column works: Mirror.filter=tcp mirrors TCP, not UDP -----------------
    rig.sb.run([str(VSCTL35), f"--db={rig.sb.db}", "--timeout=30", "--",
                "--id=@p1", "get", "Port", "p1", "--", "--id=@p3", "get", "Port", "p3", "--",
                "--id=@m", "create", "Mirror", "name=m1", "select_src_port=@p1",
                "output_port=@p3", "filter=tcp", "--", "add", "Bridge", "br0", "mirrors", "@m"])
    mirror = _mirror_port(rig)
    assert re.search(rf"(^|,){mirror}(,|$)", _trace(rig, "tcp")), _trace(rig, "tcp")
    assert not re.search(rf"(^|,){mirror}(,|$)", _trace(rig, "udp")), _trace(rig, "udp")

    # --- the guarded downgrade: 3.1 would mirror UDP too; refused by name ---------------
    pid35 = rig.status()["vswitchd"]["pid"]
    code, result = rig.reload("--vswitchd", VSWITCHD)
    assert code == 2, result
    assert "Mirror.filter" in result["reason"], result["reason"]
    assert _versions(rig) == ("8.8.0", "8.8.0")
    assert rig.status()["vswitchd"]["pid"] == pid35

    # --- without the filter (and the mirror) the downgrade commits, converted back ------
    rig.sb.run([str(VSCTL35), f"--db={rig.sb.db}", "--timeout=30", "--", "--id=@m", "get",
                "Mirror", "m1", "--", "remove", "Bridge", "br0", "mirrors", "@m"])
    code, result = rig.reload("--vswitchd", VSWITCHD)
    assert code == 0, result
    schema = result["record"]["schema"]
    assert (schema["database"], schema["target"], schema["direction"]) == (
        "8.8.0", "8.3.1", "downgrade")
    assert _versions(rig) == ("8.3.1", "8.3.1")
    assert "3.1" in rig.status()["vswitchd"]["version"]
    assert _tools_output(rig) == tools_before
    assert _user_digests(rig) == digests_before


def test_failed_upgrade_converts_back(rig35: Rig, tmp_path: Path) -> None:
    """A 3.5 that cannot start: rolled back, the database converted back, the same 3.1 serves."""
    rig = rig35
    broken = tmp_path / "ovs-vswitchd-broken"
    broken.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec {V35} --version\nexit 1\n')
    broken.chmod(0o755)
    pid = rig.status()["vswitchd"]["pid"]
    code, result = rig.reload("--vswitchd", str(broken), "--schema",
                              str(OVS35 / "vswitch.ovsschema"))
    assert code == 1, result
    schema = result["record"]["schema"]
    assert schema["converted"] is True and schema["reverted"] is True
    assert _versions(rig) == ("8.3.1", "8.3.1")
    assert rig.status()["vswitchd"]["pid"] == pid
    assert _lacks(rig) == []


def test_crash_after_upgrade_restarts_the_new_binary(rig35: Rig) -> None:
    """What serves is what restarts: after `reload --vswitchd 3.5`, a crash brings back 3.5."""
    rig = rig35
    code, result = rig.reload("--vswitchd", str(V35))
    assert code == 0, result
    pid = rig.status()["vswitchd"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = rig.status().get("vswitchd") or {}
        if now.get("pid") not in (None, pid):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the supervisor did not restart vswitchd")
    assert Path(f"/proc/{now['pid']}/exe").resolve() == V35.resolve()
    assert "3.5.0" in now["version"]
    assert rig.status()["last_upgrade"]["to_version"] == now["version"]
    assert _lacks(rig) == []


def test_supervisor_crash_after_conversion_converts_back(rig35: Rig, tmp_path: Path) -> None:
    """Killed while the client rehearses on the converted database: the restarted
    supervisor rolls back and converts the database back to 8.3.1."""
    rig = rig35
    slow = tmp_path / "ovs-vswitchd-slow"
    slow.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec {V35} --version\nexec sleep 60\n')
    slow.chmod(0o755)
    pid = rig.status()["vswitchd"]["pid"]
    reload = subprocess.Popen(
        [sys.executable, "-m", "ovsndu", "reload", "--config", str(rig.cfg_path),
         "--vswitchd", str(slow), "--schema", str(OVS35 / "vswitch.ovsschema")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while rig.status().get("phase") != "client" or _versions(rig)[0] != "8.8.0":
            assert time.monotonic() < deadline, rig.status()
            time.sleep(0.05)
        rig.supervisor.kill()
        rig.supervisor.wait()
        rig.start_supervisor()
    finally:
        reload.wait(timeout=30)
    assert _versions(rig) == ("8.3.1", "8.3.1")
    st = rig.status()
    assert st["vswitchd"]["pid"] == pid
    last = st["last_upgrade"]
    assert last["outcome"] == "rolled_back" and last["schema"]["reverted"] is True
    assert any("converted back to 8.3.1" in a for a in last["anomalies"]), last["anomalies"]


def test_forced_lossy_downgrade_records_the_loss(rig35: Rig) -> None:
    """[upgrade] allow_schema_loss = true: the downgrade commits, the loss is an anomaly."""
    rig = rig35
    code, result = rig.reload("--vswitchd", str(V35))
    assert code == 0, result
    rig.sb.run([str(VSCTL35), f"--db={rig.sb.db}", "--timeout=30", "--",
                "--id=@p1", "get", "Port", "p1", "--", "--id=@p3", "get", "Port", "p3", "--",
                "--id=@m", "create", "Mirror", "name=m1", "select_src_port=@p1",
                "output_port=@p3", "filter=tcp", "--", "add", "Bridge", "br0", "mirrors", "@m"])
    rig.cfg_path.write_text(rig.cfg.replace(allow_schema_loss=True).to_toml())
    code, result = rig.reload("--vswitchd", VSWITCHD)
    assert code == 0, result
    record = result["record"]
    assert record["schema"]["lost"] == ["Mirror.filter (1 row)"]
    assert any("Mirror.filter" in a and "allow_schema_loss" in a for a in record["anomalies"])
    assert _versions(rig) == ("8.3.1", "8.3.1")
    assert Path(record["schema"]["backup"]).stat().st_size > 0


def test_crash_after_takeover_restores_31_on_the_converted_back_database(
        tmp_path: Path) -> None:
    """3.5 takes over and dies (rollback "restore"): the database goes back to 8.3.1 before
    the original 3.1 restarts with the whole state."""
    require_ovs35()
    with make_rig(tmp_path, db_env="CRASH_DB") as rig:
        bad = tmp_path / "ovs-vswitchd-crash-after"
        bad.write_text(
            f"#!/bin/bash\nREAL={V35}\n"
            'for a in "$@"; do case $a in --pidfile=*) D=$(dirname "${a#*=}");; esac; done\n'
            'if [[ "$1" == "$CRASH_DB"* ]] && [[ "$*" == *standby.pid* ]]; then\n'
            '  ( until [ "$(cat "$D/ovs-vswitchd.pid" 2>/dev/null)" = "$$" ]; do\n'
            '      sleep 0.002; done; sleep 0.02; kill -KILL $$ ) &\n'
            'fi\nexec "$REAL" "$@"\n')
        bad.chmod(0o755)
        digests = _user_digests(rig)
        code, result = rig.reload("--vswitchd", str(bad), "--schema",
                                  str(OVS35 / "vswitch.ovsschema"))
        assert code == 1, result
        record = result["record"]
        assert record["rollback_mode"] == "restore", record
        assert record["schema"]["converted"] is True and record["schema"]["reverted"] is True
        assert _versions(rig) == ("8.3.1", "8.3.1")
        st = rig.status()
        assert "3.1" in st["vswitchd"]["version"]
        # (it runs from the rollback copy; a crash would restart the original binary)
        assert Path(st["vswitchd"]["binary"]).resolve() == Path(VSWITCHD).resolve()
        assert _user_digests(rig) == digests


def test_unknown_target_schema_is_an_anomaly_not_silence(rig35: Rig, tmp_path: Path) -> None:
    """3.5 behind a wrapper with no schema beside it and none given: no conversion, but the
    columns it finds missing are named in the record."""
    rig = rig35
    wrapper = tmp_path / "ovs-vswitchd-35"
    wrapper.write_text(f'#!/bin/sh\nexec {V35} "$@"\n')
    wrapper.chmod(0o755)
    code, result = rig.reload("--vswitchd", str(wrapper))
    assert code == 0, result
    record = result["record"]
    assert record["schema"]["target"] == "" and "unknown" in record["schema"]["action"]
    assert _versions(rig) == ("8.3.1", "8.3.1")
    assert "Mirror.filter" in record["schema"]["lacks"]
    assert any("Mirror.filter" in a and "--schema" in a for a in record["anomalies"])
