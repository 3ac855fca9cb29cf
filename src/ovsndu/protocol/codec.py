"""Wire format of the sync protocol: length-prefixed msgpack frames (sans-I/O).

Pure: no I/O.  A frame is a 4-byte big-endian body length followed by one msgpack
object, the body, of at most ``max_frame`` bytes.  The body is an array whose first
element is the message tag (see :mod:`ovsndu.protocol.messages`):

* ``Hello``: ``[1, {field: value, ...}]``, a map so that later versions can add keys
  (unknown keys are ignored); its layout never changes, negotiation depends on it.
* every other message: ``[tag, field, ...]`` in dataclass field order.
* ``Chunk`` rows: ``[2, category, seq, [[value, ...], ...]]``, one array per entry
  holding its field values in the order the sender listed in its hello.

:class:`FrameDecoder` takes bytes in any fragmentation and yields frame bodies;
it refuses a declared length above ``max_frame`` as soon as the 4-byte prefix is
in, so a peer cannot make it buffer more than ``max_buffer`` bytes.
"""

from __future__ import annotations

import dataclasses
import operator
import struct
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgpack

from ovsndu.errors import LocalProtocolError, RemoteProtocolError
from ovsndu.model import ENTRY_TYPES, Entry
from ovsndu.protocol.messages import (
    MESSAGE_TYPES,
    Abort,
    Applied,
    Chunk,
    Commit,
    Credit,
    End,
    Handover,
    Heartbeat,
    Hello,
    Message,
    Ready,
)

HEADER = struct.Struct(">I")
_MAX_TEXT = 4096  # longest reason, digest, name or version string we accept in a message


# --- framing ----------------------------------------------------------------------------------


def frame(body: bytes, max_frame: int) -> bytes:
    """Prefix *body* with its length; a body above *max_frame* is our own bug."""
    if len(body) > max_frame:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds maximum {max_frame}")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Cut a byte stream into frame bodies; never buffers more than ``max_buffer`` bytes."""

    def __init__(self, max_frame: int, max_buffer: int) -> None:
        if max_buffer < max_frame + HEADER.size:
            raise ValueError("max_buffer must hold at least one whole frame")
        self.max_frame = max_frame
        self.max_buffer = max_buffer
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append *data*; the caller must take frames out before feeding more than the cap."""
        if self.buffered + len(data) > self.max_buffer:
            raise LocalProtocolError(
                f"receive buffer would exceed {self.max_buffer} bytes; drain events first"
            )
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next whole frame body, or None when more bytes are needed."""
        avail = len(self._buf) - self._pos
        if avail < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buf, self._pos)
        if length > self.max_frame:
            raise RemoteProtocolError(
                f"peer announced a frame of {length} bytes; maximum is {self.max_frame}"
            )
        if length == 0:
            raise RemoteProtocolError("peer sent an empty frame")
        if avail < HEADER.size + length:
            return None
        start = self._pos + HEADER.size
        body = bytes(self._buf[start : start + length])
        self._pos = start + length
        return body


# --- msgpack bodies --------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> Any:
    raise RemoteProtocolError(f"msgpack extension type {code} is not part of the protocol")


def unpack_body(body: bytes) -> tuple[Any, ...]:
    """Decode one frame body to ``(tag, *fields)``; anything malformed is the peer's fault."""
    try:
        obj = msgpack.unpackb(
            body, raw=False, use_list=False, strict_map_key=True, ext_hook=_refuse_ext
        )
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack's C parser raises many kinds; all mean "malformed"
        raise RemoteProtocolError(f"malformed msgpack frame: {exc}") from None
    if type(obj) is not tuple or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("frame is not an array starting with a message tag")
    return obj


def tag_type(body: tuple[Any, ...]) -> type[Message]:
    """The message class a decoded body's tag names."""
    try:
        return MESSAGE_TYPES[body[0]]
    except KeyError:
        raise RemoteProtocolError(f"unknown message tag {body[0]!r}") from None


def _want(value: Any, kind: type, what: str, *, limit: int = _MAX_TEXT) -> Any:
    if type(value) is not kind:
        raise RemoteProtocolError(f"{what} must be {kind.__name__}, got {type(value).__name__}")
    if isinstance(value, str | bytes) and len(value) > limit:
        raise RemoteProtocolError(f"{what} is longer than {limit}")
    if isinstance(value, int) and not 0 <= value < 2**63:
        raise RemoteProtocolError(f"{what} is out of range: {value}")
    return value


def _fields(body: tuple[Any, ...], cls: type[Message], n: int) -> tuple[Any, ...]:
    if len(body) != n + 1:
        raise RemoteProtocolError(f"{cls.__name__} has {len(body) - 1} fields, expected {n}")
    return body[1:]


def _str_tuple(value: Any, what: str, limit: int = 64) -> tuple[str, ...]:
    if type(value) is not tuple or len(value) > limit:
        raise RemoteProtocolError(f"{what} must be an array of at most {limit} strings")
    return tuple(_want(v, str, what) for v in value)


def _decode_hello(body: tuple[Any, ...]) -> Hello:
    (data,) = _fields(body, Hello, 1)
    if type(data) is not dict:
        raise RemoteProtocolError("Hello body must be a map")
    try:
        caps = data["capabilities"]
        if type(caps) is not dict or len(caps) > 64:
            raise RemoteProtocolError("Hello capabilities must be a map of categories")
        return Hello(
            version=_want(data["version"], int, "Hello version"),
            min_version=_want(data["min_version"], int, "Hello min_version"),
            max_version=_want(data["max_version"], int, "Hello max_version"),
            role=_want(data["role"], str, "Hello role"),
            software=_want(data["software"], str, "Hello software"),
            vswitchd_versions=_str_tuple(data["vswitchd_versions"], "Hello vswitchd_versions"),
            capabilities={
                _want(k, str, "category"): _str_tuple(v, f"fields of {k}") for k, v in caps.items()
            },
            window=_want(data["window"], int, "Hello window"),
            token=_want(data["token"], bytes, "Hello token", limit=1024),
        )
    except KeyError as exc:
        raise RemoteProtocolError(f"Hello lacks {exc.args[0]!r}") from None


def decode_message(body: tuple[Any, ...], rows: Mapping[str, RowDecoder]) -> Message:
    """Build the message of a body from :func:`unpack_body`; *rows* decodes chunk rows."""
    cls = tag_type(body)
    if cls is Hello:
        return _decode_hello(body)
    if cls is Chunk:
        category, seq, data = _fields(body, Chunk, 3)
        decoder = rows.get(_want(category, str, "Chunk category"))
        if decoder is None:
            raise RemoteProtocolError(f"Chunk for category {category!r} that was not negotiated")
        return Chunk(
            category=category, seq=_want(seq, int, "Chunk seq"), entries=decoder.decode(data)
        )
    if cls in (End, Applied):
        category, count, digest = _fields(body, cls, 3)
        return cls(
            category=_want(category, str, f"{cls.__name__} category"),
            count=_want(count, int, f"{cls.__name__} count"),
            digest=_want(digest, str, f"{cls.__name__} digest"),
        )
    if cls is Credit:
        (seq,) = _fields(body, Credit, 1)
        return Credit(seq=_want(seq, int, "Credit seq"))
    if cls is Abort:
        (reason,) = _fields(body, Abort, 1)
        return Abort(reason=_want(reason, str, "Abort reason"))
    _fields(body, cls, 0)
    return cls()


# --- entry rows -------------------------------------------------------------------------------


def our_fields(cls: type[Entry]) -> tuple[str, ...]:
    """The field order this side uses for *cls*'s rows."""
    return tuple(f.name for f in dataclasses.fields(cls))


def our_capabilities() -> dict[str, tuple[str, ...]]:
    """Every category this code handles, with its row field order."""
    return {name: our_fields(cls) for name, cls in ENTRY_TYPES.items()}


def _allowed_types(hint: Any) -> tuple[type, ...]:
    options = typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else (hint,)
    allowed: list[type] = []
    for option in options:
        if option is type(None):
            allowed.append(type(None))
        elif typing.get_origin(option) is tuple:
            allowed.append(tuple)
        elif option is float:
            allowed.extend((float, int))
        else:
            allowed.append(option)
    return tuple(allowed)


class RowEncoder:
    """Turns entries of one class into value tuples, in :func:`our_fields` order."""

    def __init__(self, cls: type[Entry]) -> None:
        self.cls = cls
        self.fields = our_fields(cls)
        getter = operator.attrgetter(*self.fields)
        self._get: Callable[[Entry], tuple[Any, ...]] = (
            getter if len(self.fields) > 1 else lambda e: (getter(e),)
        )

    def encode(self, entries: Sequence[Entry]) -> list[tuple[Any, ...]]:
        """Rows of *entries*; an entry of another class is our own bug."""
        if any(type(e) is not self.cls for e in entries):
            raise LocalProtocolError(f"chunk of {self.cls.CATEGORY} holds a foreign entry")
        return list(map(self._get, entries))


Maker = Callable[[tuple[Any, ...]], Entry]


class _BadRow(Exception):
    def __init__(self, row: tuple[Any, ...]) -> None:
        super().__init__()
        self.row = row


class RowDecoder:
    """Validates rows laid out in the peer's field order and builds entries from them.

    Per (class, peer field order) it compiles one small function, as dataclasses
    does for ``__init__``: unpack the row (its length must match), check every
    value's exact type against the field's annotation (string-tuple fields hold
    only strings), then build the entry through the slot descriptors, skipping the
    generated ``__init__``, which for these frozen classes only assigns.  The
    generated code names no peer-supplied text: only ``v0``, ``t0``, ``s0`` and so on.
    """

    def __init__(self, cls: type[Entry], peer_fields: Sequence[str]) -> None:
        ours = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [f for f in peer_fields if f not in ours]
        if unknown or len(set(peer_fields)) != len(peer_fields) or not peer_fields:
            raise RemoteProtocolError(
                f"{cls.CATEGORY}: peer fields {unknown} unknown, repeated or none"
            )
        missing = [
            name
            for name, f in ours.items()
            if name not in peer_fields
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise RemoteProtocolError(f"{cls.CATEGORY}: peer does not send fields {missing}")
        if hasattr(cls, "__post_init__"):  # pragma: no cover - the model has none today
            raise TypeError(f"{cls.__name__} validates in __post_init__; RowDecoder would skip it")
        self.cls = cls
        self.width = len(peer_fields)
        defaults = tuple((n, f.default) for n, f in ours.items() if n not in peer_fields)
        key = (cls, tuple(peer_fields), defaults)
        if key not in _MAKERS:
            if len(_MAKERS) >= 256:  # field orders come from peers: keep the cache bounded
                _MAKERS.clear()
            _MAKERS[key] = _compile_maker(cls, tuple(peer_fields), defaults)
        self._make = _MAKERS[key]

    def decode(self, rows: Any) -> tuple[Entry, ...]:
        """Entries of *rows*; anything of the wrong shape or type is the peer's fault."""
        category = self.cls.CATEGORY
        if type(rows) is not tuple or not rows:
            raise RemoteProtocolError(f"{category} chunk rows must be a non-empty array")
        if set(map(type, rows)) != {tuple}:
            raise RemoteProtocolError(f"{category} chunk has a non-array row")
        try:
            return tuple(map(self._make, rows))
        except ValueError:
            raise RemoteProtocolError(f"{category} chunk has a row of other than {self.width}"
                                      " values") from None
        except _BadRow as exc:
            kinds = [type(v).__name__ for v in exc.row]
            raise RemoteProtocolError(f"{category} row of types {kinds} does not fit") from None


_MAKERS: dict[tuple[type[Entry], tuple[str, ...], tuple[tuple[str, Any], ...]], Maker] = {}


def _compile_maker(
    cls: type[Entry], peer_fields: tuple[str, ...], defaults: tuple[tuple[str, Any], ...]
) -> Callable[[tuple[Any, ...]], Entry]:
    hints = typing.get_type_hints(cls)
    ns: dict[str, Any] = {"new": object.__new__, "C": cls, "Bad": _BadRow}
    values = [f"v{i}" for i in range(len(peer_fields))]
    checks: list[str] = []
    body = ["    o = new(C)"]
    for i, name in enumerate(peer_fields):
        allowed = _allowed_types(hints[name])
        if len(allowed) == 1:
            ns[f"t{i}"] = allowed[0]
            checks.append(f"type(v{i}) is not t{i}")
        else:
            ns[f"t{i}"] = frozenset(allowed)
            checks.append(f"type(v{i}) not in t{i}")
        if tuple in allowed:
            checks.append(
                f"(type(v{i}) is tuple and v{i} and not all(type(x) is str for x in v{i}))"
            )
        ns[f"s{i}"] = getattr(cls, name).__set__
        body.append(f"    s{i}(o, v{i})")
    for j, (name, default) in enumerate(defaults):
        ns[f"d{j}"], ns[f"dv{j}"] = getattr(cls, name).__set__, default
        body.append(f"    d{j}(o, dv{j})")
    source = "\n".join(
        [
            "def make(row):",
            f"    {', '.join(values)}, = row",
            f"    if {' or '.join(checks)}:",
            "        raise Bad(row)",
            *body,
            "    return o",
        ]
    )
    exec(compile(source, f"<RowDecoder {cls.__name__}>", "exec"), ns)
    maker: Callable[[tuple[Any, ...]], Entry] = ns["make"]
    return maker


# --- encoding ---------------------------------------------------------------------------------


class Encoder:
    """Frames messages; keeps one msgpack Packer and one RowEncoder per category."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._packer = msgpack.Packer(use_bin_type=True)
        self._rows = {name: RowEncoder(cls) for name, cls in ENTRY_TYPES.items()}

    def encode(self, msg: Message) -> bytes:
        """The framed bytes of *msg*."""
        return frame(self._packer.pack(self._body(msg)), self.max_frame)

    def _body(self, msg: Message) -> Iterable[Any]:
        if isinstance(msg, Hello):
            data = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
            data["capabilities"] = dict(msg.capabilities)
            return (Hello.TAG, data)
        if isinstance(msg, Chunk):
            return (Chunk.TAG, msg.category, msg.seq, self._rows[msg.category].encode(msg.entries))
        if isinstance(msg, End | Applied):
            return (msg.TAG, msg.category, msg.count, msg.digest)
        if isinstance(msg, Credit):
            return (Credit.TAG, msg.seq)
        if isinstance(msg, Abort):
            return (Abort.TAG, msg.reason)
        if isinstance(msg, Handover | Ready | Commit | Heartbeat):
            return (msg.TAG,)
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}")
