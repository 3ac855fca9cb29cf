"""The sync protocol's state machines and the sans-I/O connection that enforces them.

Rules of this module (after h11's ``_state.py``):

1. Which message may be sent or received in which state lives in the tables of
   :mod:`.states` and nowhere else: ``TRANSITIONS[side][direction][state][message
   type] -> state``.  The one move no message triggers is ``AUTOMATIC``: SYNCING
   becomes SYNCED once every negotiated category has been applied.  A lookup miss is
   the single choke point for illegal messages; the error names the side, the state
   and the message.
2. No I/O, no clock, no threads.  Every call that needs the time takes ``now`` (any
   monotonic clock, in seconds); deadlines are data, read with :meth:`next_deadline`
   and enforced by :meth:`check_deadlines`.
3. Any exception moves the connection to ERROR, where only ``Abort`` may be sent.
4. Time this side did not run is not the peer's silence.  Where heartbeats are armed
   the transport looks (``receive_data``, ``send``, ``check_deadlines``) at least every
   ``heartbeat_interval``; a look more than twice that after the previous one means our
   own process stalled (a blocked event loop, CPU or GIL starvation), while the peer's
   bytes waited in the socket.  Every deadline is then at least ``heartbeat_interval``
   from that look, so what the peer sent meanwhile is read before it is judged.

Besides the tables, the connection counts what the tables cannot see: chunk sequence
numbers, the credit window, category order, entry counts and pending acknowledgements.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Mapping, Sequence

from ovsndu.errors import LocalProtocolError, ProtocolError, RemoteProtocolError, SyncTimeout
from ovsndu.model import ENTRY_TYPES
from ovsndu.protocol.codec import (
    Encoder,
    FrameDecoder,
    RowDecoder,
    decode_message,
    our_capabilities,
    tag_type,
    unpack_body,
)
from ovsndu.protocol.messages import (
    NEED_DATA,
    Abort,
    Applied,
    Chunk,
    Credit,
    End,
    Event,
    Heartbeat,
    Hello,
    Message,
    PeerClosed,
    _NeedData,
)
from ovsndu.protocol.states import (
    AUTOMATIC,
    RECEIVE,
    SEND,
    TERMINAL,
    TRANSITIONS,
    Config,
    Direction,
    S,
    Side,
    State,
    abort,
)


class Connection:
    """One side of the sync protocol: bytes in, events out; messages in, bytes out."""

    def __init__(
        self,
        side: Side,
        *,
        token: bytes,
        now: float,
        config: Config | None = None,
        software: str = "ovsndu",
        vswitchd_versions: Sequence[str] = (),
        capabilities: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.side = side
        self.config = config or Config()
        self.state = S.IDLE
        self.software = software
        self.vswitchd_versions = tuple(vswitchd_versions)
        self.capabilities = dict(capabilities if capabilities is not None else our_capabilities())
        self.their_hello: Hello | None = None
        self.peer_abort: Abort | None = None
        self.authenticated: bool | None = None
        self.version: int | None = None
        self.window = self.config.window
        self.categories: tuple[str, ...] = ()
        #: server: category -> (digest we sent, digest the client read back after applying)
        self.applied: dict[str, tuple[str, str]] = {}
        self._token = token
        self._decoder = FrameDecoder(self.config.max_frame, self.config.max_buffer)
        self._encoder = Encoder(self.config.max_frame)
        self._rows: dict[str, RowDecoder] = {}
        self._eof = False
        self._next_seq = 0  # chunks sent (server) or received (client)
        self._credited = 0  # chunks the client has credited
        self._cat = 0  # index of the category being streamed
        self._cat_entries = 0
        self._ended: deque[tuple[str, int, str, float]] = deque()  # awaiting Applied
        self._started = self._now = self._last_recv = self._last_send = now
        self._last_progress = now
        self._hello_sent_at = now
        self._last_look = now  # the latest time this side ran (any call with a clock)
        self._resumed: float | None = None  # the look that ended our latest stall
        #: our own stalls seen (count, longest in seconds): time the peer was not blamed for
        self.stalls = 0
        self.longest_stall = 0.0

    # --- introspection used by transports ----------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number of the next chunk."""
        return self._next_seq

    @property
    def can_send_chunk(self) -> bool:
        """Whether the credit window has room for another chunk."""
        return self.state is S.SYNCING and self._next_seq - self._credited < self.window

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned as events."""
        return self._decoder.buffered

    # --- the table choke point ---------------------------------------------------------------

    def _move(self, direction: Direction, cls: type[Message]) -> State:
        try:
            return TRANSITIONS[self.side][direction][self.state][cls]
        except KeyError:
            verb = "send" if direction is SEND else "receive"
            error = LocalProtocolError if direction is SEND else RemoteProtocolError
            raise error(
                f"{self.side.value} cannot {verb} {cls.__name__} in state {self.state.name}"
            ) from None

    def _settle(self) -> None:
        if self.state in AUTOMATIC and self._applied_all():
            self.state = AUTOMATIC[self.state]

    def _applied_all(self) -> bool:
        return self._cat == len(self.categories) and not self._ended

    # --- sending -------------------------------------------------------------------------------

    def own_hello(self) -> Hello:
        """This side's Hello: the client's opening, or the server's reply after negotiate()."""
        cfg = self.config
        return Hello(
            version=self.version if self.version is not None else cfg.max_version,
            min_version=cfg.min_version,
            max_version=cfg.max_version,
            role=self.side.value,
            software=self.software,
            vswitchd_versions=self.vswitchd_versions,
            capabilities=self.capabilities,
            window=self.window,
            token=self._token,
        )

    def send(self, msg: Message, now: float) -> bytes:
        """The bytes that carry *msg*; refuses (LocalProtocolError) what the protocol forbids."""
        self._look(now)
        try:
            new = self._move(SEND, type(msg))
            data = self._encoder.encode(msg)
            self._account_send(msg, now)
        except ProtocolError:
            self.state = S.ERROR
            raise
        self.state = new
        self._settle()
        self._last_send = now
        return data

    def _account_send(self, msg: Message, now: float) -> None:
        if isinstance(msg, Hello):
            if self.side is Side.SERVER and (self.version is None or msg.version != self.version):
                raise LocalProtocolError("server must send the Hello that negotiate() returned")
            self._hello_sent_at = now
        elif isinstance(msg, Chunk):
            self._check_chunk(msg, LocalProtocolError)
            self._last_progress = now
        elif isinstance(msg, End):
            self._check_end(msg, now, LocalProtocolError)
        elif isinstance(msg, Credit):
            if not self._credited <= msg.seq < self._next_seq:
                raise LocalProtocolError(f"Credit for chunk {msg.seq} not received or credited")
            self._credited = msg.seq + 1
            self._last_progress = now
        elif isinstance(msg, Applied):
            self._check_applied(msg, LocalProtocolError)
            self._last_progress = now

    # --- checks shared by both directions -----------------------------------------------------

    def _check_chunk(self, msg: Chunk, error: type[ProtocolError]) -> None:
        if self._cat >= len(self.categories):
            raise error(f"Chunk of {msg.category} after the last category")
        current = self.categories[self._cat]
        if msg.category != current:
            raise error(f"Chunk of {msg.category} while {current} is streaming")
        if msg.seq != self._next_seq:
            raise error(f"Chunk seq {msg.seq}, expected {self._next_seq}")
        if self._next_seq - self._credited >= self.window:
            raise error(f"Chunk {msg.seq} exceeds the window of {self.window} chunks")
        if not msg.entries:
            raise error("empty Chunk")
        self._next_seq += 1
        self._cat_entries += len(msg.entries)

    def _check_end(self, msg: End, now: float, error: type[ProtocolError]) -> None:
        if self._cat >= len(self.categories):
            raise error(f"End of {msg.category} after the last category")
        current = self.categories[self._cat]
        if msg.category != current:
            raise error(f"End of {msg.category} while {current} is streaming")
        if msg.count != self._cat_entries:
            raise error(f"End of {current} counts {msg.count} entries, {self._cat_entries} sent")
        self._ended.append((current, msg.count, msg.digest, now))
        self._cat += 1
        self._cat_entries = 0

    def _check_applied(self, msg: Applied, error: type[ProtocolError]) -> None:
        if not self._ended:
            raise error(f"Applied for {msg.category} but no ended category awaits it")
        category, count, digest, _ = self._ended[0]
        if (msg.category, msg.count) != (category, count):
            raise error(
                f"Applied {msg.category} with {msg.count} entries;"
                f" expected {category} with {count}"
            )
        self._ended.popleft()
        self.applied[category] = (digest, msg.digest)

    # --- negotiation ---------------------------------------------------------------------------

    def negotiate(self) -> Hello | Abort:
        """Server, after receiving Hello: the reply to send, a Hello or an Abort saying why not."""
        hello = self.their_hello
        if self.side is not Side.SERVER or self.state is not S.NEGOTIATING or hello is None:
            raise LocalProtocolError(f"negotiate() called by {self.side.value} in {self.state}")
        cfg = self.config
        token_ok = hmac.compare_digest(hello.token, self._token)
        self.authenticated = hello.role == "client" and token_ok
        if not self.authenticated:
            return abort("refused: authentication failed")
        low = max(cfg.min_version, hello.min_version)
        high = min(cfg.max_version, hello.max_version)
        if low > high:
            return abort(
                f"no common protocol version: server supports {cfg.min_version}..{cfg.max_version},"
                f" client supports {hello.min_version}..{hello.max_version}"
            )
        lacking = [
            name
            for name, fields in self.capabilities.items()
            if not set(fields) <= set(hello.capabilities.get(name, ()))
        ]
        if lacking:
            return abort(f"client cannot take categories {lacking}")
        if hello.window < 1:
            return abort(f"client window {hello.window} is below 1")
        self.version = high
        self.window = min(hello.window, cfg.window)
        self.categories = tuple(self.capabilities)
        return self.own_hello()

    def _accept_server_hello(self, hello: Hello) -> None:
        cfg = self.config
        if hello.role != "server" or not hmac.compare_digest(hello.token, self._token):
            raise RemoteProtocolError("server presented a wrong token")
        if not (
            max(cfg.min_version, hello.min_version)
            <= hello.version
            <= min(cfg.max_version, hello.max_version)
        ):
            raise RemoteProtocolError(
                f"server chose version {hello.version}; client supports"
                f" {cfg.min_version}..{cfg.max_version},"
                f" server {hello.min_version}..{hello.max_version}"
            )
        if not 1 <= hello.window <= self.window:
            raise RemoteProtocolError(f"server window {hello.window} outside 1..{self.window}")
        for name, fields in hello.capabilities.items():
            if name not in ENTRY_TYPES:
                raise RemoteProtocolError(f"server offers unknown category {name!r}")
            self._rows[name] = RowDecoder(ENTRY_TYPES[name], fields)
        self.version = hello.version
        self.window = hello.window
        self.categories = tuple(hello.capabilities)

    # --- receiving -----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed received bytes; ``b""`` means the peer closed its end."""
        if self.state is S.ERROR:
            raise LocalProtocolError("cannot receive data: connection is in ERROR")
        if self._eof and data:
            raise LocalProtocolError("data after end of stream")
        self._look(now)
        try:
            if data:
                self._decoder.feed(data)
            else:
                self._eof = True
        except ProtocolError:
            self.state = S.ERROR
            raise
        self._now = self._last_recv = now

    def next_event(self) -> Event | _NeedData:
        """The next message received (never Heartbeat), PeerClosed, or NEED_DATA."""
        if self.state is S.ERROR:
            raise RemoteProtocolError("connection already failed")
        try:
            while True:
                body = self._decoder.next_frame()
                if body is None:
                    return self._closed() if self._eof else NEED_DATA
                if self.state is S.ABORTED:
                    continue  # after an abort nothing the peer says matters
                obj = unpack_body(body)
                new = self._move(RECEIVE, tag_type(obj))
                msg = decode_message(obj, self._rows)
                self._account_receive(msg)
                self.state = new
                self._settle()
                if not isinstance(msg, Heartbeat):
                    return msg
        except ProtocolError:
            self.state = S.ERROR
            raise

    def _closed(self) -> PeerClosed:
        if self.state in (S.COMMITTED, S.ABORTED):
            return PeerClosed()
        if self._decoder.buffered:
            raise RemoteProtocolError(f"peer closed the connection mid-frame in {self.state.name}")
        raise RemoteProtocolError(f"peer closed the connection in state {self.state.name}")

    def _account_receive(self, msg: Message) -> None:
        now = self._now
        if isinstance(msg, Hello):
            self.their_hello = msg
            if self.side is Side.CLIENT:
                self._accept_server_hello(msg)
        elif isinstance(msg, Chunk):
            self._check_chunk(msg, RemoteProtocolError)
            self._last_progress = now
        elif isinstance(msg, End):
            self._check_end(msg, now, RemoteProtocolError)
            self._last_progress = now
        elif isinstance(msg, Credit):
            if not self._credited <= msg.seq < self._next_seq:
                raise RemoteProtocolError(f"Credit for chunk {msg.seq} never sent or credited")
            self._credited = msg.seq + 1
            self._last_progress = now
        elif isinstance(msg, Applied):
            self._check_applied(msg, RemoteProtocolError)
            self._last_progress = now
        elif isinstance(msg, Abort):
            self.peer_abort = msg

    # --- deadlines -----------------------------------------------------------------------------

    def _look(self, now: float) -> None:
        """This side runs at *now*; a gap since the last look over twice the heartbeat
        interval, where heartbeats are armed, was a stall of ours (rule 4)."""
        gap = now - self._last_look
        if gap > 2 * self.config.heartbeat_interval and self._heartbeat_due() is not None:
            self._resumed = now
            self.stalls += 1
            self.longest_stall = max(self.longest_stall, gap)
        self._last_look = max(self._last_look, now)

    def _deadlines(self) -> list[tuple[float, str, float]]:
        """Armed expiries as ``(at, what, limit)``; none earlier than a heartbeat interval
        after our latest stall (rule 4)."""
        out = self._armed()
        if self._resumed is None:
            return out
        floor = self._resumed + self.config.heartbeat_interval
        return [(max(at, floor), what, limit) for at, what, limit in out]

    def _armed(self) -> list[tuple[float, str, float]]:
        cfg, state = self.config, self.state
        if state in TERMINAL:
            return []
        out: list[tuple[float, str, float]] = []
        if state in (S.IDLE, S.NEGOTIATING):
            if self.side is Side.SERVER:
                out.append((self._started + cfg.hello_timeout, "hello", cfg.hello_timeout))
            return out
        if state is S.HELLO_SENT:
            return [(self._hello_sent_at + cfg.hello_timeout, "hello", cfg.hello_timeout)]
        out.append((self._last_recv + cfg.liveness_timeout, "liveness", cfg.liveness_timeout))
        if state is S.SYNCING:
            in_flight = self._next_seq - self._credited
            if self.side is Side.SERVER and self._ended:
                out.append((self._ended[0][3] + cfg.apply_timeout, "apply", cfg.apply_timeout))
            elif (self.side is Side.SERVER and in_flight >= self.window) or (
                self.side is Side.CLIENT
                and not self._ended
                and self._cat < len(self.categories)
                and in_flight < self.window
            ):
                limit = cfg.progress_timeout
                out.append((self._last_progress + limit, "progress", limit))
        return out

    def _heartbeat_due(self) -> float | None:
        if Heartbeat not in TRANSITIONS[self.side][SEND].get(self.state, {}):
            return None
        return self._last_send + self.config.heartbeat_interval

    def next_deadline(self) -> float | None:
        """When :meth:`check_deadlines` must next be called, or None if nothing is armed."""
        times = [at for at, _, _ in self._deadlines()]
        beat = self._heartbeat_due()
        if beat is not None:
            times.append(beat)
        return min(times, default=None)

    def check_deadlines(self, now: float) -> bytes:
        """Raise SyncTimeout if a deadline passed; else the bytes of a due Heartbeat, or b"".

        A call that comes late because this side stalled does not expire anything yet
        (rule 4): what the peer sent meanwhile is read first."""
        self._look(now)
        for at, what, limit in self._deadlines():
            if now >= at:
                state, self.state = self.state.name, S.ERROR
                raise SyncTimeout(what, state, limit)
        beat = self._heartbeat_due()
        if beat is not None and now >= beat:
            return self.send(Heartbeat(), now)
        return b""
