"""A reload reads the whole configuration file again (not what the supervisor read at start)."""

from __future__ import annotations

from tests.upgrade.conftest import Rig


def test_reload_reads_upgrade_settings_again(rig: Rig) -> None:
    rig.cfg_path.write_text(rig.cfg.replace(validate=False).to_toml())
    code, result = rig.reload()
    assert code == 0, result
    phases = [p["phase"] for p in result["record"]["phases"]]
    assert "validation" not in phases and "client" in phases


def test_broken_config_refuses_the_reload(rig: Rig) -> None:
    pid = rig.status()["vswitchd"]["pid"]
    rig.cfg_path.write_text(rig.cfg.to_toml() + "\n[upgrade\n")
    code, result = rig.reload()
    assert code == 2, result
    reason = (result.get("reason") or result["stderr"]).strip()  # the CLI reads it first
    assert str(rig.cfg_path) in reason and "\n" not in reason
    rig.cfg_path.write_text(rig.cfg.to_toml())
    assert rig.status()["vswitchd"]["pid"] == pid


def test_restart_only_keys_are_refused_by_name(rig: Rig) -> None:
    rig.cfg_path.write_text(rig.cfg.replace(rundir=str(rig.cfg_path.parent / "x")).to_toml())
    code, result = rig.reload()
    assert code == 2, result
    assert "rundir" in result["reason"] and "restart" in result["reason"]
