"""The asyncio side of one sync session: a connection, its socket and its pump task.

A :class:`ServerSession` or :class:`ClientSession` owns one connected Unix socket and a
sans-I/O :class:`~ovsndu.protocol.connection.Connection`.  One pump task reads, feeds
the connection, answers its deadlines with the loop clock (heartbeats out,
``SyncTimeout`` on expiry) and queues the events the caller waits for; the session's
methods send messages and wait for the next expected one.  The pump runs on the event
loop, so nothing heavy may: a loop blocked for seconds sends no heartbeat, and the peer
rightly gives up after ``liveness_timeout`` (our own late look is logged as
``sync.stalled`` and does not blame the peer, see the connection's rule 4).  How sessions are opened
(listening, connecting, authenticating, streaming the state) is
:mod:`ovsndu.protocol.transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import structlog

from ovsndu.errors import ProtocolError, RemoteProtocolError, SyncAborted, SyncTimeout
from ovsndu.model import Snapshot
from ovsndu.protocol.connection import Connection
from ovsndu.protocol.messages import (
    Abort,
    Applied,
    Chunk,
    Commit,
    Credit,
    End,
    Event,
    Handover,
    Message,
    PeerClosed,
    Ready,
    _NeedData,
)
from ovsndu.protocol.states import TERMINAL, State, abort

log = structlog.get_logger("ovsndu.sync")

T = TypeVar("T")
_CRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Who is at the other end of a Unix socket, from SO_PEERCRED."""

    pid: int
    uid: int
    gid: int


def peer_credentials(writer: asyncio.StreamWriter) -> PeerCredentials:
    """The kernel's word on the peer of a connected Unix socket."""
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    return PeerCredentials(*_CRED.unpack(raw))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic collector for a bulk transfer.

    Streaming a million entries makes (server) or keeps (client) a million objects
    and would trigger full collections over them again and again, halving the
    throughput; neither rows nor entries hold reference cycles.  Restored after.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class _Session:
    """A connection plus the pump task that feeds it; base of both sides' sessions."""

    def __init__(
        self,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCredentials,
    ) -> None:
        self.conn = conn
        self.peer = peer
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._progress = asyncio.Event()
        self._stopped = asyncio.Event()  # set once the peer aborted or the session failed
        self._failure: BaseException | None = None
        self._pump_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def state(self) -> State:
        """The protocol state of our side."""
        return self.conn.state

    def _start(self) -> None:
        self._pump_task = asyncio.create_task(self._pump(), name=f"sync-pump-{self.peer.pid}")

    async def _pump(self) -> None:
        conn, read_size = self.conn, self.conn.config.read_size
        stalls = 0
        try:
            while True:
                beat = conn.check_deadlines(self._loop.time())
                if conn.stalls != stalls:  # our loop did not run: say so, never blame the peer
                    stalls = conn.stalls
                    log.warning("sync.stalled", side=conn.side.value, state=conn.state.name,
                                longest_s=round(conn.longest_stall, 3), stalls=stalls)
                if beat:
                    self._writer.write(beat)
                try:
                    async with asyncio.timeout_at(conn.next_deadline()):
                        data = await self._reader.read(read_size)
                except TimeoutError:
                    continue
                conn.receive_data(data, self._loop.time())
                while not isinstance(event := conn.next_event(), _NeedData):
                    self._dispatch(event)
                    if isinstance(event, PeerClosed):
                        return
        except ProtocolError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(RemoteProtocolError(f"sync connection lost: {exc}"))

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Credit | Applied):
            self._progress.set()
            return
        if isinstance(event, Abort):
            self._progress.set()
            self._stopped.set()
        self._events.put_nowait(event)

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        log.warning("sync.failed", side=self.conn.side.value, error=str(exc))
        if self.conn.state is State.ERROR:
            with contextlib.suppress(ProtocolError, OSError):
                self._writer.write(self.conn.send(abort(str(exc)), self._loop.time()))
        self._writer.close()
        self._events.put_nowait(None)
        self._progress.set()
        self._stopped.set()

    def _check(self) -> None:
        if self.conn.peer_abort is not None:
            raise SyncAborted(self.conn.peer_abort.reason, by_peer=True)
        if self._failure is not None:
            raise self._failure

    async def _send(self, msg: Message) -> None:
        self._check()
        self._writer.write(self.conn.send(msg, self._loop.time()))
        try:
            await self._writer.drain()
        except OSError as exc:
            raise RemoteProtocolError(f"sync connection lost: {exc}") from None
        self._check()

    async def _next(self, timeout: float | None = None, waiting_for: str = "event") -> Event:
        if self._events.empty():
            self._check()
        try:
            async with asyncio.timeout(timeout):
                event = await self._events.get()
        except TimeoutError:
            raise SyncTimeout(waiting_for, self.conn.state.name, timeout or 0.0) from None
        if event is None:
            self._events.put_nowait(None)
            self._check()
            raise RemoteProtocolError("sync session ended")  # pragma: no cover - _check raised
        if isinstance(event, Abort):
            raise SyncAborted(event.reason, by_peer=True)
        if isinstance(event, PeerClosed):
            raise RemoteProtocolError(f"peer closed the connection in state {self.state.name}")
        return event

    async def _guard(self, awaitable: Awaitable[T]) -> T:
        """Await *awaitable*, cancelling it if the peer aborts or the session fails meanwhile."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            self._check()
        return work.result()

    async def _expect(self, cls: type[Message], timeout: float | None) -> Message:
        event = await self._next(timeout, cls.__name__)
        if not isinstance(event, cls):  # pragma: no cover - the connection's tables forbid it
            raise RemoteProtocolError(f"expected {cls.__name__}, got {type(event).__name__}")
        return event

    async def abort(self, reason: str) -> None:
        """Send Abort (when the state allows it) and close; never raises for a dead peer."""
        if self.conn.state not in TERMINAL or self.conn.state is State.ERROR:
            with contextlib.suppress(ProtocolError, OSError):
                self._writer.write(self.conn.send(abort(reason), self._loop.time()))
                await asyncio.wait_for(self._writer.drain(), 1.0)
        log.info("sync.aborted", side=self.conn.side.value, reason=reason)
        await self.close()

    async def close(self) -> None:
        """Stop the pump and close the socket."""
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    async def _abort_on_error(self, exc: BaseException) -> None:
        if isinstance(exc, SyncAborted) and exc.by_peer:
            await self.close()
        else:
            await self.abort(str(exc) or type(exc).__name__)


class ServerSession(_Session):
    """The server's session after the state sync: drives handover, commit or abort."""

    async def handover(self) -> None:
        """Tell the client to take over now."""
        await self._send(Handover())

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for the client to say it has taken over; SyncTimeout after *timeout* s."""
        await self._expect(Ready, timeout)

    async def commit(self) -> None:
        """Declare the upgrade done."""
        await self._send(Commit())

    async def _stream(self, snapshot: Snapshot, digests: Mapping[str, str],
                      on_sent: Callable[[], None] | None = None) -> int:
        conn, size, sent = self.conn, self.conn.config.chunk_entries, 0
        for category in conn.categories:
            entries = snapshot.categories.get(category, ())
            for start in range(0, len(entries), size):
                while not conn.can_send_chunk:
                    self._progress.clear()
                    self._check()
                    await self._progress.wait()
                part = entries[start : start + size]
                await self._send(Chunk(category=category, seq=conn.next_seq, entries=part))
                sent += len(part)
            await self._send(End(category=category, count=len(entries), digest=digests[category]))
        if on_sent is not None:  # everything is sent; the client's digests are still due
            on_sent()
        while conn.state is State.SYNCING:
            self._progress.clear()
            self._check()
            await self._progress.wait()
        self._check()
        return sent


class ClientSession(_Session):
    """The client's session after the state sync: waits for handover, says ready."""

    async def wait_handover(self, timeout: float | None = None) -> None:
        """Wait until the server hands over; SyncAborted if it aborts instead."""
        await self._expect(Handover, timeout)

    async def ready(self) -> None:
        """Tell the server we have taken over."""
        await self._send(Ready())

    async def wait_commit(self, timeout: float | None = None) -> None:
        """Wait for the server's Commit; SyncAborted if it aborts instead."""
        await self._expect(Commit, timeout)

