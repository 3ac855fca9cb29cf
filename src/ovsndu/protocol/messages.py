"""The messages of the sync protocol: frozen dataclasses, one per wire message.

Pure: no I/O.  Messages say *what* is sent; :mod:`ovsndu.protocol.codec` says how
it looks on the wire and :mod:`ovsndu.protocol.connection` says *when* it may be
sent.  Every message has a small integer ``TAG``, its first wire element.

The server (the running ovsndu, next to the old vswitchd) sends ``Chunk``, ``End``,
``Handover`` and ``Commit``; the client (the new process) sends ``Credit``,
``Applied`` and ``Ready``; both send ``Hello``, ``Heartbeat`` and ``Abort``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ovsndu.model import Entry

#: Protocol versions this code speaks; negotiation picks the highest common one.
MIN_VERSION = 1
MAX_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every wire message."""

    TAG: ClassVar[int] = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """First message of each side: who it is, what it speaks, the upgrade's token.

    ``version`` is the sender's preferred version in the client's hello and the
    chosen one in the server's reply.  ``capabilities`` maps every category the
    sender handles to its field names, in the order its ``Chunk`` rows use.
    ``window`` is the number of chunks the client accepts in flight; the server
    answers with the window it will use (never larger).
    """

    TAG: ClassVar[int] = 1

    version: int
    min_version: int
    max_version: int
    role: str
    software: str
    vswitchd_versions: tuple[str, ...]
    capabilities: Mapping[str, tuple[str, ...]]
    window: int
    token: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk(Message):
    """Up to ``Config.chunk_entries`` entries of one category; ``seq`` counts chunks from 0."""

    TAG: ClassVar[int] = 2

    category: str
    seq: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class End(Message):
    """The server sent every entry of ``category``: how many, and their digest."""

    TAG: ClassVar[int] = 3

    category: str
    count: int
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Credit(Message):
    """The client consumed every chunk up to and including ``seq``: room for more."""

    TAG: ClassVar[int] = 4

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied(Message):
    """The client applied ``category``; ``digest`` is what it read back afterwards."""

    TAG: ClassVar[int] = 5

    category: str
    count: int
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Handover(Message):
    """The server hands the datapath over: the client is to take over now."""

    TAG: ClassVar[int] = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready(Message):
    """The client has taken over and is serving."""

    TAG: ClassVar[int] = 7


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit(Message):
    """The server declares the upgrade done; the client keeps serving."""

    TAG: ClassVar[int] = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort(Message):
    """Either side gives up; the client rolls back, the server keeps serving."""

    TAG: ClassVar[int] = 9

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """Liveness only; the connection consumes it and never returns it as an event."""

    TAG: ClassVar[int] = 10


MESSAGE_TYPES: Mapping[int, type[Message]] = {
    cls.TAG: cls
    for cls in (Hello, Chunk, End, Credit, Applied, Handover, Ready, Commit, Abort, Heartbeat)
}


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """Not a wire message: the peer closed the connection after a terminal state."""


class _NeedData:
    """Sentinel: :meth:`Connection.next_event` needs more bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()

Event = Message | PeerClosed
