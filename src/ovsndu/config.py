"""The ovsndu configuration: one TOML file read once into frozen dataclasses.

This module owns the file format (sections ``[ovs]``, ``[upgrade]``, ``[ovsndu]``),
its defaults, and its validation.  Every problem with a file (missing when named
explicitly, a TOML syntax error, an unknown section or key, a wrong type or value)
is a :class:`~ovsndu.errors.ConfigError` whose message is one line naming the file
and the key.  Nothing else reads the file; everyone else gets a :class:`Config`.

Two values are derived when not given (or given as ``""``): ``ovs.db`` defaults to
``unix:<rundir>/db.sock`` and ``ovsndu.control_socket`` to
``<state_dir>/control.sock``.  They are resolved at load time, so a
:class:`Config` never holds an empty placeholder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ovsndu.errors import ConfigError

DEFAULT_PATH = "/etc/ovsndu/ovsndu.toml"
DEFAULT_RUNDIR = "/var/run/openvswitch"
DEFAULT_VSWITCHD = "/usr/sbin/ovs-vswitchd"
DEFAULT_STATE_DIR = "/var/lib/ovsndu"
DEFAULT_TIMEOUT = 120.0
UNCARRIED_MODES = ("report", "refuse")


def default_db(rundir: str) -> str:
    """The OVSDB remote a vswitchd uses when none is configured."""
    return "unix:" + os.path.join(rundir, "db.sock")


def default_control_socket(state_dir: str) -> str:
    """The supervisor's control socket when none is configured."""
    return os.path.join(state_dir, "control.sock")


@dataclass(frozen=True, slots=True, kw_only=True)
class OvsConfig:
    """``[ovs]``: where the OVS daemons live and what a reload upgrades to."""

    rundir: str = DEFAULT_RUNDIR
    db: str = field(default_factory=lambda: default_db(DEFAULT_RUNDIR))
    vswitchd: str = DEFAULT_VSWITCHD
    vswitchd_args: tuple[str, ...] = ()
    netns: str = ""
    #: the schema file ``vswitchd`` needs ("": the one its installation ships beside it)
    schema: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeConfig:
    """``[upgrade]``: how an upgrade runs."""

    validate: bool = True
    timeout: float = DEFAULT_TIMEOUT
    tcp_seq_check: bool = False
    #: entries OVS offers no way to recreate: "report" (carry the rest, name them as
    #: anomalies) or "refuse" (refuse the upgrade before anything changes)
    uncarried: str = "report"
    #: let a schema downgrade drop values in columns the older schema lacks (recorded)
    allow_schema_loss: bool = False
    #: longest time the final read may keep conntrack entry creation frozen in the old
    #: vswitchd (new connections wait for the new one meanwhile); 0: never freeze
    ct_freeze_max_ms: float = 250.0
    #: freeze a pipeline that uses NAT too: new connections' first packets during the
    #: freeze pass without an entry and untranslated (named); false: not frozen, the
    #: read's window named instead
    ct_freeze_nat: bool = True
    #: the standby initialises DPDK or measures the TSC before the handover (ovs/preinit.py)
    standby_preinit: bool = True
    #: hold the old vswitchd's packet sockets and memory across its kill, freed after the
    #: lift, so its death releases the OVSDB lock and taps at once (ovs/exit_hold.py)
    exit_hold: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class OvsnduConfig:
    """``[ovsndu]``: the supervisor's own files."""

    state_dir: str = DEFAULT_STATE_DIR
    control_socket: str = field(default_factory=lambda: default_control_socket(DEFAULT_STATE_DIR))


_SECTIONS: dict[str, type[OvsConfig | UpgradeConfig | OvsnduConfig]] = {
    "ovs": OvsConfig,
    "upgrade": UpgradeConfig,
    "ovsndu": OvsnduConfig,
}
# Numbers for which 0 means "off".
_ZERO_ALLOWED = frozenset({"ct_freeze_max_ms"})
# Which base key each derived key follows, and how.
_DERIVED = {"db": ("rundir", default_db), "control_socket": ("state_dir", default_control_socket)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration; build it with :func:`load_config` or :meth:`from_dict`."""

    ovs: OvsConfig = field(default_factory=OvsConfig)
    upgrade: UpgradeConfig = field(default_factory=UpgradeConfig)
    ovsndu: OvsnduConfig = field(default_factory=OvsnduConfig)
    source: str = field(default="", compare=False)
    """The file this came from (empty for defaults); used in error messages only."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<config>") -> Self:
        """Validate parsed TOML (``{section: {key: value}}``) into a config."""
        sections: dict[str, Any] = {}
        for name, table in data.items():
            if name not in _SECTIONS:
                known = ", ".join(f"[{s}]" for s in _SECTIONS)
                raise ConfigError(f"{source}: unknown section [{name}] (known: {known})")
            if not isinstance(table, Mapping):
                raise ConfigError(f"{source}: [{name}] must be a table, got {_kind(table)}")
            sections[name] = _build_section(name, table, source)
        return cls(**sections, source=source)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as TOML-shaped plain data (every key written out)."""
        out: dict[str, dict[str, Any]] = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            out[name] = {
                f.name: list(v) if isinstance(v := getattr(section, f.name), tuple) else v
                for f in dataclasses.fields(section)
            }
        return out

    def to_toml(self) -> str:
        """The config as a TOML document that :func:`load_config` reads back equal."""
        lines: list[str] = []
        for name, table in self.to_dict().items():
            if lines:
                lines.append("")
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_toml` to ``path`` (for tests and sandboxes)."""
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    def replace(self, **changes: Any) -> Self:
        """A copy with keys changed, named without their section (all key names are unique).

        ``config.replace(rundir="/tmp/ovs", timeout=5)``.  Values are validated like a
        file's.  A derived key (``db``, ``control_socket``) that still has the value
        derived from its base follows the base when only the base changes.
        """
        data = self.to_dict()
        owner = {key: name for name, table in data.items() for key in table}
        for key, value in changes.items():
            if key not in owner:
                raise ConfigError(f"{self.source or '<config>'}: unknown key {key!r}")
            data[owner[key]][key] = list(value) if isinstance(value, tuple) else value
        for derived, (base, derive) in _DERIVED.items():
            section = data[owner[derived]]
            old_base = getattr(getattr(self, owner[base]), base)
            if base in changes and derived not in changes and section[derived] == derive(old_base):
                del section[derived]
        return type(self).from_dict(data, source=self.source or "<config>")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file; ``None`` means :data:`DEFAULT_PATH`, whose absence means defaults."""
    explicit = path is not None
    file = Path(DEFAULT_PATH if path is None else path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{file}: config file not found") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: TOML syntax error: {exc}") from None
    return Config.from_dict(data, source=str(file))


# Keys a running supervisor cannot take over from a re-read file (they name its own sockets).
RESTART_ONLY = ("rundir", "db", "netns", "state_dir", "control_socket")


def reread(cfg: Config) -> Config:
    """*cfg*'s file read again (every reload does); ConfigError if it is now broken, or
    changes a key only a supervisor restart can apply.  A config not from a file stays."""
    if cfg.source.startswith("<"):
        return cfg
    fresh = load_config(cfg.source or None)
    old, new = cfg.to_dict(), fresh.to_dict()
    for section, table in old.items():
        for key in RESTART_ONLY:
            if key in table and table[key] != new[section][key]:
                raise ConfigError(f"{fresh.source or DEFAULT_PATH}: [{section}] {key} changed "
                                  f"({table[key]!r} → {new[section][key]!r}): restart the "
                                  f"supervisor to apply it")
    return fresh


def _build_section(
    name: str, table: Mapping[str, Any], source: str
) -> OvsConfig | UpgradeConfig | OvsnduConfig:
    cls = _SECTIONS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{source}: [{name}] {key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
        values[key] = _check(where, key, str(fields[key].type), value)
    for derived, (base, derive) in _DERIVED.items():
        if derived in fields and not values.get(derived):
            values[derived] = derive(values.get(base, getattr(cls(), base)))
    return cls(**values)


def _check(where: str, key: str, hint: str, value: object) -> object:
    """Check one value against its field's annotation; return it in the field's type."""
    if hint == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_kind(value)}")
        return value
    if hint == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_kind(value)}")
        if key in _ZERO_ALLOWED:
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{where}: expected a number >= 0, got {value!r}")
        elif not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: expected a positive number, got {value!r}")
        return float(value)
    if hint == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {_kind(value)}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {_kind(value)}")
    if key in {"rundir", "state_dir", "vswitchd"} and not value:
        raise ConfigError(f"{where}: must not be empty")
    if key == "uncarried" and value not in UNCARRIED_MODES:
        raise ConfigError(f"{where}: expected \"report\" or \"refuse\", got {value!r}")
    return value


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, Mapping):
        return "a table"
    return f"{type(value).__name__} {value!r}"[:80]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return _toml_string(value)
    raise TypeError(f"no TOML form for {type(value).__name__}")


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
