"""The typed, immutable entries of a vswitchd's runtime state: nine categories.

Pure: no I/O.  Each category is a frozen dataclass; its ``VOLATILE`` fields
(counters, durations, ages, remaining timeouts) are kept in the snapshot but
left out of the canonical encoding, hence out of digests and comparisons.
``IDENTITY`` names the fields that say *which* entry it is, so a diff can tell
a changed entry from an added and a removed one.  The whole picture (all nine
categories, canonical order, digests) is :mod:`ovsndu.model.snapshot`'s.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, ClassVar

from ovsndu.errors import ModelError

CATEGORIES: tuple[str, ...] = (
    "ports",
    "tunnel_neighbors",
    "flows",
    "meters",
    "groups",
    "tlv_mappings",
    "conntrack",
    "fdb",
    "routes",
)

FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """Base of every category's entry."""

    CATEGORY: ClassVar[str] = ""
    IDENTITY: ClassVar[tuple[str, ...]] = ()
    VOLATILE: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """All fields, as JSON/msgpack primitives (tuples become lists)."""
        return {name: _plain(getattr(self, name)) for name in _field_names(type(self))}

    def stable(self) -> dict[str, Any]:
        """The fields that carry across a restart: what digests cover."""
        return {name: _plain(getattr(self, name)) for name in _stable_names(type(self))}

    def canonical(self) -> bytes:
        """The canonical encoding: compact JSON of ``[category, stable values in field order]``."""
        return _encode([self.CATEGORY, *_getters(type(self))[1](self)]).encode()

    def identity(self) -> tuple[Any, ...]:
        """Which entry this is, independent of its other values (never None inside)."""
        return _getters(type(self))[0](self)  # type: ignore[no-any-return]


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# The same encoder, made once: JSONEncoder.encode builds its C encoder on every call,
# half the cost of a canonical encoding (100k conntrack entries: ~0.25 s of a build).
_C_ENCODE = (c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",",
                            False, False, True) if c_make_encoder is not None else None)


def _encode(values: list[Any]) -> str:
    """``_ENCODER.encode(values)``, byte for byte."""
    if _C_ENCODE is None:
        return _ENCODER.encode(values)
    return "".join(_C_ENCODE(values, 0))
_NAMES: dict[type[Entry], tuple[str, ...]] = {}
_STABLE: dict[type[Entry], tuple[str, ...]] = {}


def _field_names(cls: type[Entry]) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


_ROWS: dict[type[Entry], tuple[tuple[str, ...], Callable[[Entry], tuple[Any, ...]]]] = {}


def json_rows(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    """Each entry's fields as a dict for JSON: :meth:`Entry.to_dict` but with tuples left as
    they are (JSON writes them as the same arrays), made ~4x faster (300k entries: the
    crash-recovery snapshot file)."""
    out = []
    for e in entries:
        cls = type(e)
        row = _ROWS.get(cls)
        if row is None:
            names = _field_names(cls)
            # A trailing extra name makes attrgetter return a tuple even for one field;
            # zip stops at the names.
            row = _ROWS[cls] = (names, operator.attrgetter(*names, names[0]))
        out.append(dict(zip(row[0], row[1](e))))  # noqa: B905
    return out


_GETTERS: dict[type[Entry], tuple[Callable[[Entry], Any], Callable[[Entry], Any]]] = {}


def _getters(cls: type[Entry]) -> tuple[Callable[[Entry], Any], Callable[[Entry], Any]]:
    """attrgetters of the identity (always a tuple) and of the stable fields."""
    getters = _GETTERS.get(cls)
    if getters is None:
        # A trailing extra name makes attrgetter return a tuple even for one field.
        ident = operator.attrgetter(*cls.IDENTITY, cls.IDENTITY[0])
        stable = operator.attrgetter(*_stable_names(cls), "CATEGORY")
        getters = _GETTERS[cls] = (lambda e: ident(e)[:-1], lambda e: stable(e)[:-1])
    return getters


def _stable_names(cls: type[Entry]) -> tuple[str, ...]:
    names = _STABLE.get(cls)
    if names is None:
        names = _STABLE[cls] = tuple(n for n in _field_names(cls) if n not in cls.VOLATILE)
    return names


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# --- the nine categories --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Port(Entry):
    """One interface of a bridge port, with its OpenFlow and datapath numbers.

    ``mirror_output``: the port is a mirror's output port (OVSDB ``Mirror.output_port``);
    the bridge drops frames arriving there before MAC learning.
    """

    CATEGORY: ClassVar[str] = "ports"
    IDENTITY: ClassVar[tuple[str, ...]] = ("bridge", "port", "interface")
    VOLATILE: ClassVar[frozenset[str]] = frozenset({"dp_port", "mac"})

    bridge: str
    port: str
    interface: str
    type: str
    ofport: int
    dp_port: int | None = None
    mac: str | None = None
    mirror_output: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TunnelNeighbor(Entry):
    """An entry of the native-tunnelling neighbour cache (``tnl/neigh/show``)."""

    CATEGORY: ClassVar[str] = "tunnel_neighbors"
    IDENTITY: ClassVar[tuple[str, ...]] = ("bridge", "ip")

    bridge: str
    ip: str
    mac: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Flow(Entry):
    """An OpenFlow rule: ``match`` and ``actions`` as ovs-ofctl prints them (display, diffs,
    digests); ``wire``, when set, the base64 flow-mod that installs it byte for byte
    (:mod:`ovsndu.ovs.ofwire`), kept out of digests: encodings may differ between releases
    for the same rule."""

    CATEGORY: ClassVar[str] = "flows"
    IDENTITY: ClassVar[tuple[str, ...]] = ("bridge", "table", "priority", "match")
    VOLATILE: ClassVar[frozenset[str]] = frozenset(
        {"duration", "n_packets", "n_bytes", "idle_age", "hard_age", "wire"}
    )

    bridge: str
    table: int
    cookie: str
    priority: int
    match: str
    actions: str
    idle_timeout: int = 0
    hard_timeout: int = 0
    flags: tuple[str, ...] = ()
    importance: int = 0
    duration: float | None = None
    n_packets: int | None = None
    n_bytes: int | None = None
    idle_age: int | None = None
    hard_age: int | None = None
    wire: str = ""

    def spec(self) -> str:
        """The ``ovs-ofctl add-flow`` text that installs this rule again."""
        parts = [f"table={self.table}", f"cookie={self.cookie}", f"priority={self.priority}"]
        if self.idle_timeout:
            parts.append(f"idle_timeout={self.idle_timeout}")
        if self.hard_timeout:
            parts.append(f"hard_timeout={self.hard_timeout}")
        if self.importance:
            parts.append(f"importance={self.importance}")
        parts.extend(self.flags)
        if self.match:
            parts.append(self.match)
        return ",".join(parts) + f" actions={self.actions}"


#: OpenFlow's reserved meters (OFPM_SLOWPATH, OFPM_CONTROLLER), named as ovs-ofctl prints them
METER_ID_NAMES = {0xFFFFFFFD: "slowpath", 0xFFFFFFFE: "controller"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Meter(Entry):
    """An OpenFlow meter; ``bands`` are ``type=drop rate=N burst_size=M`` texts."""

    CATEGORY: ClassVar[str] = "meters"
    IDENTITY: ClassVar[tuple[str, ...]] = ("bridge", "meter_id")

    bridge: str
    meter_id: int
    flags: tuple[str, ...]
    bands: tuple[str, ...]

    def spec(self) -> str:
        """The ``ovs-ofctl add-meter`` text (reserved ids by the names ovs-ofctl uses)."""
        bands = ",".join(band.replace(" ", ",") for band in self.bands)
        name = METER_ID_NAMES.get(self.meter_id, str(self.meter_id))
        return ",".join((f"meter={name}", *self.flags, f"bands={bands}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Group(Entry):
    """An OpenFlow group: type, selection properties and buckets (ovs-ofctl text);
    ``wire``, when set, the base64 OpenFlow 1.5 group-mod that creates it byte for byte
    (:mod:`ovsndu.ovs.ofwire`), kept out of digests like a flow's."""

    CATEGORY: ClassVar[str] = "groups"
    IDENTITY: ClassVar[tuple[str, ...]] = ("bridge", "group_id")
    VOLATILE: ClassVar[frozenset[str]] = frozenset({"wire"})

    bridge: str
    group_id: int
    type: str
    selection_method: str | None = None
    properties: str = ""
    buckets: tuple[str, ...] = ()
    wire: str = ""

    def spec(self) -> str:
        """The ``ovs-ofctl add-group`` text."""
        parts = [f"group_id={self.group_id}", f"type={self.type}"]
        if self.properties:
            parts.append(self.properties)
        parts.extend(f"bucket={b}" for b in self.buckets)
        return ",".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlvMapping(Entry):
    """A Geneve TLV to ``tun_metadataN`` mapping of a bridge."""

    CATEGORY: ClassVar[str] = "tlv_mappings"
    IDENTITY: ClassVar[tuple[str, ...]] = ("bridge", "index")

    bridge: str
    tlv_class: str
    tlv_type: int
    length: int
    index: int

    def spec(self) -> str:
        """The ``ovs-ofctl add-tlv-map`` text."""
        return (
            f"{{class={self.tlv_class},type={self.tlv_type:#x},len={self.length}}}"
            f"->tun_metadata{self.index}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Conntrack(Entry):
    """A connection-tracking entry; tuples are ``src=..,dst=..,sport=..`` texts.

    ``helper`` is the ALG (``ftp``, ``tftp``) the connection was committed with;
    ``parent`` the original tuple of the connection whose expectation this (related)
    connection matched, as ``dpctl/dump-conntrack -m`` prints it.  TCP only:
    ``tcp_flags_orig``/``_reply`` the per-side flags (``WINDOW_SCALE``...) and
    ``wscale_orig``/``_reply`` the window-scale shifts the SYNs announced.
    """

    CATEGORY: ClassVar[str] = "conntrack"
    IDENTITY: ClassVar[tuple[str, ...]] = ("zone", "protocol", "orig")
    VOLATILE: ClassVar[frozenset[str]] = frozenset({"timeout"})

    protocol: str
    orig: str
    reply: str
    zone: int = 0
    mark: int = 0
    labels: str = "0x0"
    state_orig: str | None = None
    state_reply: str | None = None
    nat: str = ""
    helper: str = ""
    parent: str = ""
    tcp_flags_orig: str = ""
    tcp_flags_reply: str = ""
    wscale_orig: int = 0
    wscale_reply: int = 0
    timeout: int | None = None

    @property
    def state(self) -> str | None:
        """The TCP protocol state as ``orig/reply``, or None for other protocols."""
        if self.state_orig is None:
            return None
        return f"{self.state_orig}/{self.state_reply}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FdbEntry(Entry):
    """A MAC learning entry; ``port`` is the OpenFlow port number or ``LOCAL``."""

    CATEGORY: ClassVar[str] = "fdb"
    IDENTITY: ClassVar[tuple[str, ...]] = ("bridge", "vlan", "mac")
    VOLATILE: ClassVar[frozenset[str]] = frozenset({"age"})

    bridge: str
    port: str
    vlan: int
    mac: str
    static: bool = False
    age: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Route(Entry):
    """An OVS routing-table entry; ``kind`` is ``user`` (added) or ``cached`` (from the kernel)."""

    CATEGORY: ClassVar[str] = "routes"
    IDENTITY: ClassVar[tuple[str, ...]] = ("kind", "prefix", "pkt_mark")
    VOLATILE: ClassVar[frozenset[str]] = frozenset({"src"})

    kind: str
    prefix: str
    dev: str
    gateway: str | None = None
    pkt_mark: int = 0
    local: bool = False
    src: str | None = None


ENTRY_TYPES: Mapping[str, type[Entry]] = types.MappingProxyType(
    {
        cls.CATEGORY: cls
        for cls in (
            Port,
            TunnelNeighbor,
            Flow,
            Meter,
            Group,
            TlvMapping,
            Conntrack,
            FdbEntry,
            Route,
        )
    }
)
assert tuple(ENTRY_TYPES) == CATEGORIES


def entry_from_dict(category: str, data: Mapping[str, Any]) -> Entry:
    """Rebuild one entry from :meth:`Entry.to_dict` output; unknown or missing keys, and
    values OVS could not have printed (:mod:`ovsndu.model.validate`), are errors."""
    try:
        cls = ENTRY_TYPES[category]
    except KeyError:
        raise ModelError(f"unknown category {category!r}") from None
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints:
            raise ModelError(f"{category}: unknown field {key!r}")
        kwargs[key] = tuple(value) if isinstance(value, list) else value
        if not _type_ok(kwargs[key], hints[key]):
            raise ModelError(f"{category}: field {key!r} has wrong type {type(value).__name__}")
    try:
        entry = cls(**kwargs)
    except TypeError as exc:
        raise ModelError(f"{category}: {exc}") from None
    from ovsndu.model.validate import check_entry  # validate imports this module

    check_entry(entry)
    return entry


_HINT_CACHE: dict[type[Entry], dict[str, Any]] = {}


def _hints(cls: type[Entry]) -> dict[str, Any]:
    if cls not in _HINT_CACHE:
        names = {f.name for f in dataclasses.fields(cls)}
        _HINT_CACHE[cls] = {k: v for k, v in typing.get_type_hints(cls).items() if k in names}
    return _HINT_CACHE[cls]


def _type_ok(value: Any, hint: Any) -> bool:
    options = typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if typing.get_origin(option) is tuple:
            if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
                return True
        elif (
            (option is float and isinstance(value, int | float) and not isinstance(value, bool))
            or (option is int and isinstance(value, int) and not isinstance(value, bool))
            or (option in (str, bool) and type(value) is option)
        ):
            return True
    return False
