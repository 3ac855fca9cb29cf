"""The policy-rc.d hook: who decides what, chaining with an existing policy-rc.d, the script."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ovsndu.errors import OvsnduError
from ovsndu.systemd import packaging
from ovsndu.systemd.packaging import decide


@pytest.mark.parametrize(("unit", "action", "script", "package", "want"), [
    ("ovsdb-server.service", "stop", "preinst", "openvswitch-switch", "deny"),
    ("ovs-vswitchd.service", "stop", "preinst", "openvswitch-switch", "deny"),
    ("openvswitch-switch.service", "restart", "postinst", "openvswitch-switch", "upgrade"),
    ("openvswitch-switch.service", "start", "postinst", "openvswitch-switch", "upgrade"),
    ("ovs-vswitchd.service", "restart", "postinst", "openvswitch-common", "upgrade"),
    ("ovsdb-server.service", "restart", "postinst", "openvswitch-switch", "allow"),
    # a removal, the operator, other packages: stock meaning
    ("openvswitch-switch.service", "stop", "prerm", "openvswitch-switch", "allow"),
    ("ovs-vswitchd.service", "stop", "", "", "allow"),
    ("ovs-vswitchd.service", "restart", "postinst", "nginx", "allow"),
    ("nginx.service", "restart", "postinst", "openvswitch-switch", "allow"),
    # RequiredBy openvswitch-switch, which ovsdb-server is PartOf: its stop stops the DB
    ("ovs-record-hostname.service", "stop", "preinst", "openvswitch-switch", "deny"),
    ("ovs-record-hostname.service", "restart", "postinst", "openvswitch-switch", "allow"),
])
def test_decide(unit: str, action: str, script: str, package: str, want: str) -> None:
    assert decide(unit, action, script, package) == want


def test_install_chains_an_existing_policy_and_uninstall_puts_it_back(tmp_path: Path) -> None:
    policy, chained = tmp_path / packaging.POLICY, tmp_path / packaging.CHAINED
    policy.parent.mkdir(parents=True)
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    assert packaging.install_policy(tmp_path, "/x/ovsndu") == [str(policy)]
    assert packaging.is_ours(policy) and chained.read_text() == "#!/bin/sh\nexit 101\n"
    assert packaging.install_policy(tmp_path, "/x/ovsndu") == []  # idempotent
    assert packaging.uninstall_policy(tmp_path) == [str(policy)]
    assert policy.read_text() == "#!/bin/sh\nexit 101\n" and not chained.exists()
    assert packaging.uninstall_policy(tmp_path) == []  # not ours: left alone
    packaging.install_policy(tmp_path, "/x/ovsndu")
    chained.write_text("another\n")
    policy.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(OvsnduError, match="move one of them away"):
        packaging.install_policy(tmp_path, "/x/ovsndu")


def _run(script: Path, *args: str) -> int:
    return subprocess.run(["sh", str(script), *args], capture_output=True, check=False,
                          timeout=30).returncode


def test_script_asks_ovsndu_only_for_ovs_units_and_never_fails(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    hook = tmp_path / "fake-ovsndu"
    hook.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                    '[ "$3" = stop ] && exit 101\nexit 3\n')
    hook.chmod(0o755)
    script = tmp_path / "policy-rc.d"
    script.write_text(packaging.render_policy(str(hook)).replace(
        "/usr/sbin/policy-rc.d.ovsndu-chained", str(tmp_path / "chained")))
    assert _run(script, "ovs-vswitchd.service", "stop") == 101
    assert _run(script, "--quiet", "ovsdb-server.service", "stop") == 101
    assert _run(script, "openvswitch-switch.service", "restart") == 0  # hook error: allowed
    assert _run(script, "nginx.service", "restart") == 0
    assert calls.read_text().splitlines() == [
        "package-hook ovs-vswitchd.service stop", "package-hook ovsdb-server.service stop",
        "package-hook openvswitch-switch.service restart"]
    (tmp_path / "chained").write_text("#!/bin/sh\nexit 101\n")
    (tmp_path / "chained").chmod(0o755)
    assert _run(script, "nginx.service", "restart") == 101  # the other policy still rules
    assert _run(script, "openvswitch-switch.service", "restart") == 101
    assert len(calls.read_text().splitlines()) == 3  # ... and is asked first
    missing = tmp_path / "policy-missing"
    missing.write_text(packaging.render_policy(str(tmp_path / "gone")).replace(
        "/usr/sbin/policy-rc.d.ovsndu-chained", str(tmp_path / "none")))
    assert _run(missing, "ovs-vswitchd.service", "stop") == 0  # ovsndu gone: stock


def test_ovsdb_server_replaced_compares_the_running_binary_with_the_installed_one(
        tmp_path: Path) -> None:
    """Replaced on disk by an identical file (a reinstall): no restart; different: restart."""
    import shutil
    import subprocess

    running = tmp_path / "ovsdb-server"
    shutil.copy("/bin/sleep", running)
    proc = subprocess.Popen([str(running), "30"])
    try:
        (tmp_path / "ovsdb-server.pid").write_text(f"{proc.pid}\n")
        installed = tmp_path / "installed"
        shutil.copy("/bin/sleep", installed)
        assert not packaging.ovsdb_server_replaced(str(tmp_path), str(installed))  # same file
        running.unlink()
        shutil.copy("/bin/sleep", running)  # dpkg: a new inode, the same bytes
        assert not packaging.ovsdb_server_replaced(str(tmp_path), str(installed))
        installed.write_bytes(installed.read_bytes() + b"\0")
        assert packaging.ovsdb_server_replaced(str(tmp_path), str(installed))
        assert packaging.ovsdb_server_replaced(str(tmp_path / "nowhere"), str(installed))
    finally:
        proc.kill()
        proc.wait()
