"""The sync protocol's rules as data: which message moves which side where, and limits.

``TRANSITIONS[side][direction][state][message type] -> state`` for both sides, sending
and receiving; ``AUTOMATIC`` for the one move no message triggers (SYNCING becomes
SYNCED once every negotiated category is applied); ``TERMINAL`` states; the limits
and deadlines of one side (:class:`Config`) and the Abort reason's bound.  Pure data,
enforced by :class:`ovsndu.protocol.connection.Connection` and drawn by
docs/make_diagrams.py (docs/protocol.md).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from ovsndu.protocol.codec import HEADER
from ovsndu.protocol.messages import (
    MAX_VERSION,
    MESSAGE_TYPES,
    MIN_VERSION,
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


class Side(enum.Enum):
    """Which end of the channel a connection is."""

    SERVER = "server"
    CLIENT = "client"


class Direction(enum.Enum):
    """Whether a transition is taken by sending or by receiving a message."""

    SEND = "send"
    RECEIVE = "receive"


class State(enum.Enum):
    """Protocol states; each side has its own copy of the machine."""

    IDLE = enum.auto()
    HELLO_SENT = enum.auto()
    NEGOTIATING = enum.auto()
    SYNCING = enum.auto()
    SYNCED = enum.auto()
    HANDOVER = enum.auto()
    READY = enum.auto()
    COMMITTED = enum.auto()
    ABORTED = enum.auto()
    ERROR = enum.auto()


S = State
SEND, RECEIVE = Direction.SEND, Direction.RECEIVE
Table = Mapping[State, Mapping[type[Message], State]]

TERMINAL = frozenset({S.COMMITTED, S.ABORTED, S.ERROR})
_ANY_MESSAGE = dict.fromkeys(MESSAGE_TYPES.values(), S.ABORTED)  # after an abort: ignore

TRANSITIONS: Mapping[Side, Mapping[Direction, Table]] = {
    Side.SERVER: {
        SEND: {
            S.IDLE: {Abort: S.ABORTED},
            S.NEGOTIATING: {Hello: S.SYNCING, Abort: S.ABORTED},
            S.SYNCING: {Chunk: S.SYNCING, End: S.SYNCING, Heartbeat: S.SYNCING, Abort: S.ABORTED},
            S.SYNCED: {Handover: S.HANDOVER, Heartbeat: S.SYNCED, Abort: S.ABORTED},
            S.HANDOVER: {Heartbeat: S.HANDOVER, Abort: S.ABORTED},
            S.READY: {Commit: S.COMMITTED, Heartbeat: S.READY, Abort: S.ABORTED},
            S.ERROR: {Abort: S.ERROR},
        },
        RECEIVE: {
            S.IDLE: {Hello: S.NEGOTIATING},
            S.NEGOTIATING: {Heartbeat: S.NEGOTIATING, Abort: S.ABORTED},
            S.SYNCING: {
                Credit: S.SYNCING, Applied: S.SYNCING, Heartbeat: S.SYNCING, Abort: S.ABORTED
            },
            S.SYNCED: {Heartbeat: S.SYNCED, Abort: S.ABORTED},
            S.HANDOVER: {Ready: S.READY, Heartbeat: S.HANDOVER, Abort: S.ABORTED},
            S.READY: {Heartbeat: S.READY, Abort: S.ABORTED},
            S.COMMITTED: {Heartbeat: S.COMMITTED, Abort: S.COMMITTED},
            S.ABORTED: _ANY_MESSAGE,
        },
    },
    Side.CLIENT: {
        SEND: {
            S.IDLE: {Hello: S.HELLO_SENT},
            S.HELLO_SENT: {Heartbeat: S.HELLO_SENT, Abort: S.ABORTED},
            S.SYNCING: {
                Credit: S.SYNCING, Applied: S.SYNCING, Heartbeat: S.SYNCING, Abort: S.ABORTED
            },
            S.SYNCED: {Heartbeat: S.SYNCED, Abort: S.ABORTED},
            S.HANDOVER: {Ready: S.READY, Heartbeat: S.HANDOVER, Abort: S.ABORTED},
            S.READY: {Heartbeat: S.READY, Abort: S.ABORTED},
            S.ERROR: {Abort: S.ERROR},
        },
        RECEIVE: {
            S.HELLO_SENT: {Hello: S.SYNCING, Abort: S.ABORTED},
            S.SYNCING: {Chunk: S.SYNCING, End: S.SYNCING, Heartbeat: S.SYNCING, Abort: S.ABORTED},
            S.SYNCED: {Handover: S.HANDOVER, Heartbeat: S.SYNCED, Abort: S.ABORTED},
            S.HANDOVER: {Heartbeat: S.HANDOVER, Abort: S.ABORTED},
            S.READY: {Commit: S.COMMITTED, Heartbeat: S.READY, Abort: S.ABORTED},
            S.COMMITTED: {Heartbeat: S.COMMITTED},
            S.ABORTED: _ANY_MESSAGE,
        },
    },
}

#: State-triggered moves, taken when every negotiated category is applied.
AUTOMATIC: Mapping[State, State] = {S.SYNCING: S.SYNCED}

_MAX_REASON = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Limits and deadlines of one side; the defaults suit a host with a million entries."""

    min_version: int = MIN_VERSION
    max_version: int = MAX_VERSION
    max_frame: int = 4 * 1024 * 1024
    read_size: int = 256 * 1024
    chunk_entries: int = 1024
    window: int = 8
    hello_timeout: float = 10.0
    progress_timeout: float = 30.0
    apply_timeout: float = 900.0
    heartbeat_interval: float = 2.0
    liveness_timeout: float = 10.0

    @property
    def max_buffer(self) -> int:
        """The most bytes a receive buffer may hold: one whole frame plus one read."""
        return self.max_frame + HEADER.size + self.read_size


def abort(reason: str) -> Abort:
    """An Abort whose reason fits the wire limit."""
    return Abort(reason=reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…")
