"""The sync channel between the running ovsndu (server) and the new process (client).

This package's core contains no networking code at all: :mod:`.messages` (what is
sent), :mod:`.codec` (how it looks on the wire), :mod:`.states` (when it may be
sent, as transition tables), :mod:`.connection` (the connection that enforces them).
The asyncio Unix-socket transport lives in
:mod:`ovsndu.protocol.transport` and is not imported here, so that importing the
protocol never pulls in asyncio.  See docs/protocol.md.
"""

from ovsndu.protocol.connection import Connection
from ovsndu.protocol.messages import (
    MAX_VERSION,
    MIN_VERSION,
    NEED_DATA,
    Abort,
    Applied,
    Chunk,
    Commit,
    Credit,
    End,
    Event,
    Handover,
    Heartbeat,
    Hello,
    Message,
    PeerClosed,
    Ready,
)
from ovsndu.protocol.states import (
    AUTOMATIC,
    TERMINAL,
    TRANSITIONS,
    Config,
    Direction,
    Side,
    State,
    abort,
)

__all__ = [
    "AUTOMATIC",
    "MAX_VERSION",
    "MIN_VERSION",
    "NEED_DATA",
    "TERMINAL",
    "TRANSITIONS",
    "Abort",
    "Applied",
    "Chunk",
    "Commit",
    "Config",
    "Connection",
    "Credit",
    "Direction",
    "End",
    "Event",
    "Handover",
    "Heartbeat",
    "Hello",
    "Message",
    "PeerClosed",
    "Ready",
    "Side",
    "State",
    "abort",
]
