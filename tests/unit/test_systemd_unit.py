"""ovsndu install-systemd / uninstall-systemd into a directory tree, and the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovsndu.cli import main
from ovsndu.errors import OvsnduError
from ovsndu.systemd import packaging, units
from ovsndu.systemd import unit as systemd_unit

REPO = Path(__file__).resolve().parents[2]


def test_packaged_files_are_the_repositorys() -> None:
    assert systemd_unit.shipped("ovsndu.conf") == (
        REPO / "systemd/ovs-vswitchd.service.d/ovsndu.conf").read_text()
    assert systemd_unit.shipped("org.ovsndu.Supervisor1.conf") == (
        REPO / "systemd/org.ovsndu.Supervisor1.conf").read_text()


def test_dropin_names_this_ovsndu() -> None:
    text = systemd_unit.render_dropin("/opt/x/bin/ovsndu")
    assert "ExecStart=/opt/x/bin/ovsndu supervise" in text
    assert "ExecReload=/opt/x/bin/ovsndu reload" in text
    assert systemd_unit.SHIPPED_COMMAND not in text
    assert "ExecStopPost=/opt/x/bin/ovsndu stop-post" in text
    # only the supervisor is killed when it dies: vswitchd keeps forwarding (issue 13)
    for line in ("Type=notify", "NotifyAccess=main", "ExecStop=", "KillMode=process",
                 "WatchdogSec=30", "Restart=no"):
        assert line in text.splitlines()
    # the stock [Unit] (ovsdb-server ordering and dependencies) is left alone
    assert "[Unit]" not in text.splitlines()


def test_install_and_uninstall_are_idempotent(tmp_path: Path) -> None:
    dropin = tmp_path / systemd_unit.DROPIN
    policy = tmp_path / systemd_unit.POLICY
    ovsdb = tmp_path / units.OVSDB_DROPIN
    first = systemd_unit.install(tmp_path)
    rc_d = tmp_path / packaging.POLICY
    assert first.changed == [str(dropin), str(policy), str(ovsdb), str(rc_d)]
    assert not first.unchanged
    assert first.daemon_reload.startswith("skipped")
    assert systemd_unit.ovsndu_command() in dropin.read_text()
    assert policy.stat().st_mode & 0o777 == 0o644
    again = systemd_unit.install(tmp_path)
    assert not again.changed and len(again.unchanged) == 4
    dropin.write_text("edited\n")
    assert systemd_unit.install(tmp_path).changed == [str(dropin)]
    gone = systemd_unit.uninstall(tmp_path)
    assert len(gone.changed) == 4
    assert not dropin.exists() and not dropin.parent.exists() and not policy.exists()
    assert not ovsdb.parent.exists() and not rc_d.exists()
    assert len(systemd_unit.uninstall(tmp_path).unchanged) == 5


STOCK = """[Unit]
Description=Open vSwitch Forwarding Unit
After=ovsdb-server.service network-pre.target systemd-udev-settle.service
Requires=ovsdb-server.service
ReloadPropagatedFrom=ovsdb-server.service
PartOf=openvswitch-switch.service

[Service]
Type=forking
ExecStart=/usr/share/openvswitch/scripts/ovs-ctl start
"""


def test_override_drops_the_propagating_dependencies(tmp_path: Path) -> None:
    """ovsdb-server's restart/reload must not reach vswitchd: a full unit without them."""
    (tmp_path / units.STOCK[0]).parent.mkdir(parents=True)
    (tmp_path / units.STOCK[0]).write_text(STOCK)
    systemd_unit.install(tmp_path)
    lines = (tmp_path / units.OVERRIDE).read_text().splitlines()
    for dropped in units.DROPPED:
        assert dropped not in lines
    assert "Wants=ovsdb-server.service" in lines
    assert "After=ovsdb-server.service network-pre.target systemd-udev-settle.service" in lines
    assert "ExecStart=/usr/share/openvswitch/scripts/ovs-ctl start" in lines
    systemd_unit.uninstall(tmp_path)
    assert not (tmp_path / units.OVERRIDE).exists()
    # An administrator's own unit is never overwritten nor removed.
    (tmp_path / units.OVERRIDE).write_text("[Unit]\nDescription=mine\n")
    with pytest.raises(OvsnduError, match="not ovsndu's"):
        systemd_unit.install(tmp_path)
    systemd_unit.uninstall(tmp_path)
    assert (tmp_path / units.OVERRIDE).read_text() == "[Unit]\nDescription=mine\n"


def test_cli(tmp_path: Path, capsys: object) -> None:
    assert main(["install-systemd", "--root", str(tmp_path), "--no-reload"]) == 0
    assert (tmp_path / systemd_unit.DROPIN).is_file()
    assert main(["uninstall-systemd", "--root", str(tmp_path)]) == 0
    assert not (tmp_path / systemd_unit.DROPIN).exists()
