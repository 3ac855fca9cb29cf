"""The asyncio Unix-socket transport of the sync protocol, and the API upgrade code calls.

With :mod:`ovsndu.protocol.session` (one session's socket and pump task) this is the
only protocol code that does I/O: it listens or connects, checks the peer, runs the
handshake and streams the state; the sessions it returns drive the rest.

Server (the running ovsndu, next to the old vswitchd)::

    result = await serve_state(path, snapshot, token, expected_uid=0, expected_pid=child_pid)
    # every category streamed, and the client's read-back digests matched ours
    async with result.session as session:
        await session.handover()              # client: take over now
        await session.wait_ready(timeout=30)  # client: I am serving
        await session.commit()                # or: await session.abort("reason")

Client (the new process)::

    result = await receive_state(path, token, apply=install)   # install(category, entries)
    async with result.session as session:                       #   -> digest read back
        await session.wait_handover()
        ...take over the datapath...
        await session.ready()
        await session.wait_commit()           # raises SyncAborted if the server aborts

Failures raise :class:`~ovsndu.errors.ProtocolError` subclasses (``SyncTimeout`` for a
missed deadline) or :class:`~ovsndu.errors.SyncAborted`; whichever side fails first
sends ``Abort`` with the reason before closing.  Security: the socket's directory must
be owned by us and mode 0700, the socket is mode 0600, the peer's SO_PEERCRED uid (and
pid, when given) must match, and the hello must carry the upgrade's token.  A peer
failing any check is refused, logged and counted; the server keeps waiting for the
legitimate client, and closes the listener as soon as that client is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import stat
import types
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ovsndu import __version__
from ovsndu.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SyncAborted,
    SyncTimeout,
)
from ovsndu.model import CATEGORIES, Entry, Snapshot, VswitchdInfo, category_digest
from ovsndu.protocol.connection import Connection
from ovsndu.protocol.messages import Applied, Chunk, Credit, End, Hello
from ovsndu.protocol.session import (
    ClientSession,
    PeerCredentials,
    ServerSession,
    collector_paused,
    peer_credentials,
)
from ovsndu.protocol.states import Config, Side, State, abort

__all__ = [
    "ApplyAllCallback",
    "ApplyCallback",
    "ClientResult",
    "ClientSession",
    "PeerCredentials",
    "ServerResult",
    "ServerSession",
    "receive_state",
    "secure_directory",
    "serve_state",
]

log = structlog.get_logger("ovsndu.sync")

#: ``apply(category, entries)`` installs one category and returns the digest read back.
ApplyCallback = Callable[[str, tuple[Entry, ...]], str | Awaitable[str]]
#: ``apply_all(snapshot)`` installs everything and returns category -> digest read back.
ApplyAllCallback = Callable[[Snapshot], Mapping[str, str] | Awaitable[Mapping[str, str]]]

_EMPTY_DIGEST = category_digest(())


def secure_directory(directory: Path) -> None:
    """Create *directory* mode 0700, or check an existing one is ours, 0700 and no symlink."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700, parents=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise LocalProtocolError(
            f"socket directory {directory} must be a directory of uid {os.geteuid()} with mode"
            f" 0700; it is uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):04o}"
        )


@dataclass(frozen=True, slots=True)
class ServerResult:
    """What :func:`serve_state` achieved; ``session`` drives the rest of the upgrade."""

    session: ServerSession
    client_hello: Hello
    applied: Mapping[str, str]
    entries: int
    seconds: float
    refused: int


@dataclass(frozen=True, slots=True)
class ClientResult:
    """What :func:`receive_state` received; ``session`` waits for handover and commit."""

    snapshot: Snapshot
    session: ClientSession
    server_hello: Hello
    applied: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Listener:
    expected_uid: int
    expected_pid: int | None
    make_conn: Callable[[], Connection]
    chosen: asyncio.Future[ServerSession]
    refused: int = 0
    sessions: set[ServerSession] = field(default_factory=set)

    def refuse(self, why: str, peer: PeerCredentials) -> None:
        self.refused += 1
        log.warning("sync.peer_refused", reason=why, pid=peer.pid, uid=peer.uid, count=self.refused)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_credentials(writer)
        session = ServerSession(self.make_conn(), reader, writer, peer)
        self.sessions.add(session)
        try:
            if peer.uid != self.expected_uid or self.expected_pid not in (None, peer.pid):
                self.refuse("credentials", peer)
                await session.abort(f"refused: peer uid {peer.uid} pid {peer.pid} not expected")
                return
            session._start()
            hello = await session._expect(Hello, None)
            assert isinstance(hello, Hello)
            reply = session.conn.negotiate()
            if self.chosen.done():
                reply = abort("refused: another client is being served")
            await session._send(reply)
            if isinstance(reply, Hello):
                self.sessions.discard(session)
                self.chosen.set_result(session)
                log.info("sync.client_accepted", pid=peer.pid, software=hello.software)
                return
            if session.conn.authenticated:
                if not self.chosen.done():
                    self.chosen.set_exception(RemoteProtocolError(f"client {reply.reason}"))
            else:
                self.refuse("token", peer)
        except (ProtocolError, SyncAborted, OSError) as exc:
            self.refuse(f"handshake: {exc}", peer)
        await session.close()
        self.sessions.discard(session)


async def serve_state(
    path: str | os.PathLike[str],
    snapshot: Snapshot,
    token: bytes,
    expected_uid: int,
    expected_pid: int | None = None,
    *,
    config: Config | None = None,
    digests: Mapping[str, str] | None = None,
    vswitchd_versions: Sequence[str] = (),
    accept_timeout: float | None = 60.0,
    on_sent: Callable[[], None] | None = None,
) -> ServerResult:
    """Listen at *path*, stream *snapshot* to the one authenticated client, check its digests.

    Returns once every category is applied with matching digests (both sides SYNCED);
    a mismatch aborts the session and raises SyncAborted.  *digests* may carry the
    snapshot's category digests when the caller has them already.  *on_sent* is called
    (on the event loop) once every category is sent, before the client's digests.
    """
    config = config or Config()
    path = Path(path)
    secure_directory(path.parent)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
    loop = asyncio.get_running_loop()
    listener = _Listener(
        expected_uid,
        expected_pid,
        lambda: Connection(
            Side.SERVER,
            token=token,
            now=loop.time(),
            config=config,
            software=f"ovsndu {__version__}",
            vswitchd_versions=vswitchd_versions,
        ),
        loop.create_future(),
    )
    server = await asyncio.start_unix_server(listener.handle, path=str(path))
    try:
        os.chmod(path, 0o600)
        log.info("sync.listening", path=str(path), expected_uid=expected_uid, pid=expected_pid)
        try:
            async with asyncio.timeout(accept_timeout):
                session = await listener.chosen
        except TimeoutError:
            raise SyncTimeout("accept", State.IDLE.name, accept_timeout or 0.0) from None
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for other in list(listener.sessions):
            await other.close()
    started = loop.time()
    try:
        digests = digests if digests is not None else snapshot.digests()
        with collector_paused():
            sent = await session._stream(snapshot, digests, on_sent)
        bad = {c: pair for c, pair in session.conn.applied.items() if pair[0] != pair[1]}
        if bad:
            details = ", ".join(
                f"{c} sent {a[:12]}, read back {b[:12]}" for c, (a, b) in bad.items()
            )
            raise SyncAborted(f"digest mismatch after apply: {details}", by_peer=False)
    except BaseException as exc:
        await session._abort_on_error(exc)
        raise
    assert session.conn.their_hello is not None
    log.info("sync.synced", side="server", entries=sent, seconds=loop.time() - started)
    return ServerResult(
        session=session,
        client_hello=session.conn.their_hello,
        applied={c: theirs for c, (_, theirs) in session.conn.applied.items()},
        entries=sent,
        seconds=loop.time() - started,
        refused=listener.refused,
    )


async def _connect(path: str, timeout: float
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the server's socket, waiting up to *timeout* seconds for it to listen:
    the server is started beside the client, not before it, and a socket that is bound
    but not yet listening refuses (seen under load: the supervisor's loop thread was
    kept from its listen() by a worker holding the GIL)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await asyncio.wait_for(asyncio.open_unix_connection(path),
                                          max(0.01, deadline - loop.time()))
        except (FileNotFoundError, ConnectionRefusedError):
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.02)


async def receive_state(
    path: str | os.PathLike[str],
    token: bytes,
    apply: ApplyCallback | None = None,
    *,
    apply_all: ApplyAllCallback | None = None,
    config: Config | None = None,
    vswitchd_versions: Sequence[str] = (),
    expected_uid: int | None = None,
    connect_timeout: float = 10.0,
) -> ClientResult:
    """Connect to the server at *path*, receive and apply every category, return the state.

    *apply* gets each category's entries once its End arrives, may be a coroutine
    function, and returns the digest it read back; that digest is acknowledged.  An
    exception from *apply* aborts the sync.  With *expected_uid*, the server's
    SO_PEERCRED uid must match.
    *apply_all*, instead of *apply*, gets the whole state once every category has
    ended (run in a worker thread unless it is a coroutine function) and returns the
    digest read back per category; the acknowledgements follow it in stream order.
    """
    config = config or Config()
    loop = asyncio.get_running_loop()
    reader, writer = await _connect(os.fspath(path), connect_timeout)
    peer = peer_credentials(writer)
    conn = Connection(
        Side.CLIENT,
        token=token,
        now=loop.time(),
        config=config,
        software=f"ovsndu {__version__}",
        vswitchd_versions=vswitchd_versions,
    )
    session = ClientSession(conn, reader, writer, peer)
    try:
        if expected_uid is not None and peer.uid != expected_uid:
            raise RemoteProtocolError(f"server runs as uid {peer.uid}, expected {expected_uid}")
        await session._send(conn.own_hello())
        session._start()
        server_hello = await session._expect(Hello, None)
        assert isinstance(server_hello, Hello)
        with collector_paused():
            received = await _receive_categories(session, apply, apply_all)
    except BaseException as exc:
        await session._abort_on_error(exc)
        raise
    version = server_hello.vswitchd_versions[0] if server_hello.vswitchd_versions else None
    # The server's End digests: its apply-time check already compared them with ours.
    snapshot = Snapshot(
        VswitchdInfo(pid=None, version=version),
        types.MappingProxyType({c: received.get(c, ()) for c in CATEGORIES}),
        types.MappingProxyType(
            {c: conn.applied[c][0] if c in conn.applied else _EMPTY_DIGEST for c in CATEGORIES}
        ),
    )
    return ClientResult(
        snapshot=snapshot,
        session=session,
        server_hello=server_hello,
        applied={c: theirs for c, (_, theirs) in conn.applied.items()},
    )


async def _receive_categories(
    session: ClientSession, apply: ApplyCallback | None, apply_all: ApplyAllCallback | None = None
) -> dict[str, tuple[Entry, ...]]:
    if (apply is None) == (apply_all is None):
        raise LocalProtocolError("receive_state needs exactly one of apply and apply_all")
    conn = session.conn
    ended: list[tuple[str, int]] = []
    parts: dict[str, list[Entry]] = {c: [] for c in conn.categories}
    received: dict[str, tuple[Entry, ...]] = {}
    while conn.state is State.SYNCING:
        event = await session._next(waiting_for="state")
        if isinstance(event, Chunk):
            parts[event.category].extend(event.entries)
            await session._send(Credit(seq=event.seq))
        elif isinstance(event, End):
            entries = received[event.category] = tuple(parts.pop(event.category))
            if apply_all is not None:
                ended.append((event.category, event.count))
                if not parts:
                    await _apply_everything(session, apply_all, received, ended)
                continue
            assert apply is not None
            digest: Any = apply(event.category, entries)
            if inspect.isawaitable(digest):
                digest = await session._guard(digest)
            if not isinstance(digest, str):
                raise LocalProtocolError(f"apply({event.category}) returned {digest!r}, not str")
            await session._send(Applied(category=event.category, count=event.count, digest=digest))
    return received


async def _apply_everything(
    session: ClientSession,
    apply_all: ApplyAllCallback,
    received: Mapping[str, tuple[Entry, ...]],
    ended: list[tuple[str, int]],
) -> None:
    """Run *apply_all* on the whole state, then acknowledge every category in order.

    The snapshot is built in a worker thread: sorting and digesting 300k entries takes
    seconds, during which a blocked event loop would send no heartbeat."""
    def build() -> Snapshot:
        return Snapshot.build(VswitchdInfo(pid=None, version=None),
                              {c: received.get(c, ()) for c in CATEGORIES})

    if inspect.iscoroutinefunction(apply_all):
        snap = await session._guard(asyncio.to_thread(build))
        digests = await session._guard(apply_all(snap))
    else:
        digests = await session._guard(asyncio.to_thread(lambda: apply_all(build())))
    for category, count in ended:
        digest = digests.get(category) if isinstance(digests, Mapping) else None
        if not isinstance(digest, str):
            raise LocalProtocolError(f"apply_all returned no digest for {category}")
        await session._send(Applied(category=category, count=count, digest=digest))
