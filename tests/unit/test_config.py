"""The TOML config: defaults, derived values, one-line errors, write-back."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ovsndu.config as config_module
from ovsndu.config import Config, load_config
from ovsndu.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ovsndu.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestDefaults:
    def test_missing_default_file_means_defaults(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a path and without /etc/ovsndu/ovsndu.toml, everything is default."""
        monkeypatch.setattr(config_module, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
        cfg = load_config(None)
        assert cfg == Config()
        assert cfg.ovs.rundir == "/var/run/openvswitch"
        assert cfg.ovs.db == "unix:/var/run/openvswitch/db.sock"
        assert cfg.ovs.vswitchd == "/usr/sbin/ovs-vswitchd"
        assert cfg.ovs.vswitchd_args == ()
        assert cfg.ovs.netns == ""
        assert cfg.upgrade.validate is True
        assert cfg.upgrade.timeout == 120.0
        assert cfg.upgrade.tcp_seq_check is False
        assert cfg.upgrade.uncarried == "report"
        assert cfg.ovsndu.state_dir == "/var/lib/ovsndu"
        assert cfg.ovsndu.control_socket == "/var/lib/ovsndu/control.sock"

    def test_default_file_is_read_when_present(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``None`` reads the default path when it exists."""
        path = _write(tmp_path, "[upgrade]\ntimeout = 7\n")
        monkeypatch.setattr(config_module, "DEFAULT_PATH", str(path))
        assert load_config(None).upgrade.timeout == 7.0

    def test_empty_file_is_all_defaults(self, tmp_path: Path) -> None:
        """An empty file is valid."""
        assert load_config(_write(tmp_path, "")) == Config()


class TestValues:
    def test_full_file(self, tmp_path: Path) -> None:
        """Every key is read into its typed field."""
        path = _write(
            tmp_path,
            """
            [ovs]
            rundir = "/tmp/r"
            db = "tcp:127.0.0.1:6640"
            vswitchd = "/opt/ovs/sbin/ovs-vswitchd"
            vswitchd_args = ["--enable-dummy=override", "--disable-system"]
            netns = "ns1"
            [upgrade]
            validate = false
            timeout = 2.5
            tcp_seq_check = true
            [ovsndu]
            state_dir = "/tmp/s"
            control_socket = "/tmp/c.sock"
            """,
        )
        cfg = load_config(str(path))
        assert cfg.ovs.rundir == "/tmp/r"
        assert cfg.ovs.db == "tcp:127.0.0.1:6640"
        assert cfg.ovs.vswitchd_args == ("--enable-dummy=override", "--disable-system")
        assert cfg.ovs.netns == "ns1"
        assert cfg.upgrade.validate is False
        assert cfg.upgrade.timeout == 2.5
        assert cfg.upgrade.tcp_seq_check is True
        assert cfg.ovsndu.control_socket == "/tmp/c.sock"
        assert cfg.source == str(path)

    def test_db_follows_rundir(self, tmp_path: Path) -> None:
        """db defaults to unix:<rundir>/db.sock when only rundir is given."""
        cfg = load_config(_write(tmp_path, '[ovs]\nrundir = "/tmp/run"\n'))
        assert cfg.ovs.db == "unix:/tmp/run/db.sock"

    def test_control_socket_follows_state_dir(self, tmp_path: Path) -> None:
        """control_socket defaults to <state_dir>/control.sock; an empty string too."""
        cfg = load_config(_write(tmp_path, '[ovsndu]\nstate_dir = "/tmp/st"\n'))
        assert cfg.ovsndu.control_socket == "/tmp/st/control.sock"
        empty = load_config(_write(tmp_path, '[ovsndu]\nstate_dir = "/s"\ncontrol_socket = ""\n'))
        assert empty.ovsndu.control_socket == "/s/control.sock"

    def test_integer_timeout_becomes_float(self, tmp_path: Path) -> None:
        """TOML integers are accepted for the timeout."""
        cfg = load_config(_write(tmp_path, "[upgrade]\ntimeout = 30\n"))
        assert cfg.upgrade.timeout == 30.0
        assert isinstance(cfg.upgrade.timeout, float)


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("[ovs\n", "TOML syntax error"),
            ("[bogus]\n", "unknown section [bogus]"),
            ("[ovs]\nrundirr = '/x'\n", "[ovs] rundirr: unknown key"),
            ("[upgrade]\ntimeout = 'soon'\n", "[upgrade] timeout: expected a number"),
            ("[upgrade]\ntimeout = true\n", "[upgrade] timeout: expected a number"),
            ("[upgrade]\ntimeout = -1\n", "[upgrade] timeout: expected a positive number"),
            ("[upgrade]\ntimeout = nan\n", "[upgrade] timeout: expected a positive number"),
            ("[upgrade]\nvalidate = 1\n", "[upgrade] validate: expected true or false"),
            ("[ovs]\nvswitchd_args = '--x'\n", "[ovs] vswitchd_args: expected a list"),
            ("[ovs]\nvswitchd_args = [1]\n", "[ovs] vswitchd_args: expected a list"),
            ("[ovs]\nrundir = 5\n", "[ovs] rundir: expected a string"),
            ("[ovs]\nrundir = ''\n", "[ovs] rundir: must not be empty"),
            ("ovs = 1\n", "[ovs] must be a table"),
        ],
    )
    def test_bad_file_is_one_line_naming_file_and_key(
        self, tmp_path: Path, text: str, expected: str
    ) -> None:
        """Each problem is a ConfigError with a one-line message naming the file."""
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(str(path))
        assert expected in message

    def test_explicit_missing_file(self, tmp_path: Path) -> None:
        """A path given explicitly must exist."""
        with pytest.raises(ConfigError, match="not found"):
            load_config(tmp_path / "nope.toml")

    def test_not_utf8(self, tmp_path: Path) -> None:
        """Undecodable bytes are a ConfigError, not a UnicodeDecodeError."""
        path = tmp_path / "bad.toml"
        path.write_bytes(b"[ovs]\nrundir = '\xff'\n")
        with pytest.raises(ConfigError, match="not UTF-8"):
            load_config(path)


class TestWriteBack:
    def test_round_trip(self, tmp_path: Path) -> None:
        """to_toml() is read back equal."""
        cfg = Config().replace(rundir="/tmp/a b", vswitchd_args=('--x="q"', "tab\there"), timeout=3)
        path = tmp_path / "out.toml"
        cfg.write(path)
        assert load_config(path) == cfg

    @given(
        st.text(st.characters(codec="utf-8"), min_size=1),
        st.lists(st.text(st.characters(codec="utf-8"))),
    )
    def test_any_string_round_trips(self, text: str, args: list[str]) -> None:
        """Strings with quotes, backslashes and control characters survive to_toml()."""
        cfg = Config().replace(netns=text, vswitchd=text, vswitchd_args=args)
        assert Config.from_dict(tomllib.loads(cfg.to_toml())) == cfg


class TestReplace:
    def test_replace_validates(self) -> None:
        """replace() checks values like a file does."""
        with pytest.raises(ConfigError, match="timeout"):
            Config().replace(timeout="x")
        with pytest.raises(ConfigError, match="unknown key"):
            Config().replace(nope=1)

    def test_derived_values_follow_their_base(self) -> None:
        """Changing rundir or state_dir moves a still-derived db or control socket."""
        cfg = Config().replace(rundir="/r", state_dir="/s")
        assert cfg.ovs.db == "unix:/r/db.sock"
        assert cfg.ovsndu.control_socket == "/s/control.sock"

    def test_explicit_derived_values_stay(self) -> None:
        """An explicitly set db is not overwritten by a later rundir change."""
        cfg = Config().replace(db="tcp:1.2.3.4:6640").replace(rundir="/r")
        assert cfg.ovs.db == "tcp:1.2.3.4:6640"
        both = Config().replace(rundir="/r", db="unix:/elsewhere.sock")
        assert both.ovs.db == "unix:/elsewhere.sock"


class TestUncarried:
    def test_refuse_is_read(self, tmp_path: Path) -> None:
        """``uncarried = "refuse"`` is accepted and kept."""
        cfg = load_config(_write(tmp_path, '[upgrade]\nuncarried = "refuse"\n'))
        assert cfg.upgrade.uncarried == "refuse"

    @pytest.mark.parametrize("value", ['"ignore"', '""', "true"])
    def test_other_values_are_one_line_errors(self, tmp_path: Path, value: str) -> None:
        """Anything but report/refuse names the file and the key."""
        path = _write(tmp_path, f"[upgrade]\nuncarried = {value}\n")
        with pytest.raises(ConfigError, match=r"\[upgrade\] uncarried") as info:
            load_config(path)
        assert "\n" not in str(info.value)


def test_reread_takes_new_values_and_refuses_restart_only_keys(tmp_path: Path) -> None:
    from ovsndu.config import reread

    path = tmp_path / "ovsndu.toml"
    path.write_text('[upgrade]\nvalidate = true\n')
    cfg = load_config(path)
    path.write_text('[upgrade]\nvalidate = false\n[ovs]\nschema = "/s.ovsschema"\n')
    fresh = reread(cfg)
    assert fresh.upgrade.validate is False and fresh.ovs.schema == "/s.ovsschema"
    path.write_text('[ovs]\nrundir = "/elsewhere"\n')
    with pytest.raises(ConfigError, match=r"\[ovs\] rundir changed.*restart the supervisor"):
        reread(cfg)
    assert reread(Config.from_dict({})) == Config.from_dict({})  # not from a file: kept
