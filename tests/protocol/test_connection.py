"""The sans-I/O connection: whole syncs in memory, the tables, negotiation, deadlines."""

from __future__ import annotations

import random

import pytest

from ovsndu.errors import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SyncTimeout,
)
from ovsndu.protocol import (
    TRANSITIONS,
    Abort,
    Applied,
    Chunk,
    Commit,
    Config,
    Connection,
    Credit,
    Direction,
    End,
    Handover,
    Heartbeat,
    Hello,
    PeerClosed,
    Ready,
    Side,
    State,
)
from ovsndu.protocol.messages import MESSAGE_TYPES
from tests.protocol.helpers import TOKEN, drain, feed, pair, run_sync, snapshot

SNAP = snapshot(5)


def synced() -> tuple[Connection, Connection]:
    server, client = pair()
    list(run_sync(server, client, SNAP))
    return server, client


def sample(cls: type) -> object:
    """A well-formed instance of every message type."""
    entries = SNAP.categories["ports"][:1]
    return {
        Hello: pair()[1].own_hello,
        Chunk: lambda: Chunk(category="ports", seq=0, entries=entries),
        End: lambda: End(category="ports", count=0, digest="0" * 64),
        Credit: lambda: Credit(seq=0),
        Applied: lambda: Applied(category="ports", count=0, digest="0" * 64),
        Abort: lambda: Abort(reason="test"),
    }.get(cls, cls)()


class TestWholeSync:
    @pytest.mark.parametrize("step", [1, 7, None])
    def test_fixed_fragmentation(self, step: int | None) -> None:
        """A whole state with every category syncs byte by byte and in fixed pieces."""
        server, client = pair()
        events = list(run_sync(server, client, SNAP, step=step))
        assert server.state is client.state is State.SYNCED
        chunks = [e for who, e in events if isinstance(e, Chunk)]
        received = {c: tuple(e for ch in chunks if ch.category == c for e in ch.entries)
                    for c in SNAP.categories}
        assert received == dict(SNAP.categories)
        assert server.applied == {c: (d, d) for c, d in SNAP.digests().items()}

    @pytest.mark.parametrize("seed", range(8))
    def test_random_fragmentation(self, seed: int) -> None:
        """Random piece sizes never change what is received."""
        server, client = pair()
        rng = random.Random(seed)
        list(run_sync(server, client, SNAP, chunk=rng.randint(1, 6), rng=rng))
        assert server.state is client.state is State.SYNCED

    def test_handover_commit(self) -> None:
        """After the sync: Handover, Ready, Commit end both sides COMMITTED; EOF is then fine."""
        server, client = synced()
        assert feed(client, server.send(Handover(), 1)) == [Handover()]
        assert feed(server, client.send(Ready(), 1)) == [Ready()]
        assert feed(client, server.send(Commit(), 1)) == [Commit()]
        assert server.state is client.state is State.COMMITTED
        client.receive_data(b"", 2)
        assert drain(client) == [PeerClosed()]

    def test_heartbeats_are_consumed(self) -> None:
        """Heartbeats keep the peer alive but never surface as events."""
        server, client = synced()
        assert feed(server, client.send(Heartbeat(), 1)) == []


class TestTables:
    def test_every_state_can_abort(self) -> None:
        """Every non-terminal state of both sides can send Abort, hence every abort path exists."""
        for side, directions in TRANSITIONS.items():
            for state, moves in directions[Direction.SEND].items():
                if state not in (State.IDLE,) or side is Side.SERVER:
                    assert Abort in moves, (side, state)

    @pytest.mark.parametrize("side", list(Side))
    def test_illegal_receive_names_state_and_message(self, side: Side) -> None:
        """Every message the receive table lacks for IDLE/HELLO_SENT is refused by name."""
        server, client = pair()
        conn = server if side is Side.SERVER else client
        if side is Side.CLIENT:
            client.send(client.own_hello(), 0)
        table = TRANSITIONS[side][Direction.RECEIVE][conn.state]
        peer = client if side is Side.SERVER else server
        for cls in MESSAGE_TYPES.values():
            if cls in table:
                continue
            fresh = pair()[0] if side is Side.SERVER else pair()[1]
            if side is Side.CLIENT:
                fresh.send(fresh.own_hello(), 0)
            data = peer._encoder.encode(sample(cls))  # type: ignore[arg-type]
            with pytest.raises(RemoteProtocolError) as info:
                feed(fresh, data)
            assert cls.__name__ in str(info.value)
            assert fresh.state.name not in ("",) and "in state" in str(info.value)
            assert fresh.state is State.ERROR

    def test_illegal_send_is_local_error(self) -> None:
        """Sending Commit before Ready is our own error, named with the state."""
        server, _ = synced()
        with pytest.raises(LocalProtocolError, match="cannot send Commit in state SYNCED"):
            server.send(Commit(), 1)
        assert server.state is State.ERROR
        server.send(Abort(reason="after error"), 1)  # only Abort is left

    def test_automatic_move_needs_every_category(self) -> None:
        """The server stays SYNCING until the last Applied arrives."""
        server, client = pair()
        events = list(run_sync(server, client, SNAP))
        applied = [e for who, e in events if who == "server" and isinstance(e, Applied)]
        assert len(applied) == 9


class TestAbortPaths:
    @pytest.mark.parametrize("stage", ["hello", "syncing", "synced", "handover", "ready"])
    @pytest.mark.parametrize("by", list(Side))
    def test_abort_in_every_stage(self, stage: str, by: Side) -> None:
        """Either side may abort in every stage; the peer gets the reason and ends ABORTED."""
        server, client = pair()
        if stage == "hello":
            # the client waits for the server's hello; the server is negotiating
            feed(server, client.send(client.own_hello(), 0))
        elif stage == "syncing":
            feed(server, client.send(client.own_hello(), 0))
            feed(client, server.send(server.negotiate(), 0))
        else:
            list(run_sync(server, client, SNAP))
            if stage in ("handover", "ready"):
                feed(client, server.send(Handover(), 0))
            if stage == "ready":
                feed(server, client.send(Ready(), 0))
        sender, receiver = (server, client) if by is Side.SERVER else (client, server)
        events = feed(receiver, sender.send(Abort(reason=f"{stage} failed"), 1))
        assert events == [Abort(reason=f"{stage} failed")]
        assert sender.state is receiver.state is State.ABORTED
        assert receiver.peer_abort == Abort(reason=f"{stage} failed")

    def test_messages_after_abort_are_ignored(self) -> None:
        """Chunks in flight when we aborted do not turn into errors."""
        server, client = pair()
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0))
        chunk = server.send(Chunk(category="ports", seq=0, entries=SNAP.categories["ports"]), 0)
        client.send(Abort(reason="enough"), 0)
        assert feed(client, chunk) == []

    def test_eof_mid_sync_is_an_error(self) -> None:
        """The peer closing before a terminal state is a protocol error naming the state."""
        server, client = pair()
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0))
        client.receive_data(b"", 1)
        with pytest.raises(RemoteProtocolError, match="closed the connection in state SYNCING"):
            drain(client)


class TestNegotiation:
    def test_highest_common_version(self) -> None:
        """The server picks the highest version both support."""
        server, client = pair(Config(min_version=1, max_version=3),
                              client_config=Config(min_version=2, max_version=5))
        feed(server, client.send(client.own_hello(), 0))
        reply = server.negotiate()
        assert isinstance(reply, Hello) and reply.version == 3
        feed(client, server.send(reply, 0))
        assert client.version == server.version == 3

    def test_no_common_version_shows_both_ranges(self) -> None:
        """No overlap: the server refuses with both ranges in the reason."""
        server, client = pair(Config(min_version=1, max_version=1),
                              client_config=Config(min_version=2, max_version=3))
        feed(server, client.send(client.own_hello(), 0))
        reply = server.negotiate()
        assert isinstance(reply, Abort)
        assert "server supports 1..1" in reply.reason
        assert "client supports 2..3" in reply.reason
        assert server.authenticated is True
        assert feed(client, server.send(reply, 0)) == [reply]

    def test_wrong_token_refused(self) -> None:
        """A hello with the wrong token is refused, without telling the version."""
        server, client = pair(client_token=b"x" * 32)
        feed(server, client.send(client.own_hello(), 0))
        reply = server.negotiate()
        assert reply == Abort(reason="refused: authentication failed")
        assert server.authenticated is False

    def test_client_checks_server_token(self) -> None:
        """A server with another token is a protocol error on the client."""
        server = Connection(Side.SERVER, token=b"other", now=0)
        client = Connection(Side.CLIENT, token=b"other", now=0)
        feed(server, client.send(client.own_hello(), 0))
        data = server.send(server.negotiate(), 0)
        wrong = Connection(Side.CLIENT, token=TOKEN, now=0)
        wrong.send(wrong.own_hello(), 0)
        with pytest.raises(RemoteProtocolError, match="wrong token"):
            feed(wrong, data)

    def test_missing_category_refused(self) -> None:
        """A client that cannot take a category the server sends is refused."""
        server = Connection(Side.SERVER, token=TOKEN, now=0)
        client = Connection(Side.CLIENT, token=TOKEN, now=0,
                            capabilities={"ports": ("bridge",)})
        feed(server, client.send(client.own_hello(), 0))
        reply = server.negotiate()
        assert isinstance(reply, Abort) and "cannot take categories" in reply.reason


class TestFlowControl:
    def test_window_bounds_server(self) -> None:
        """The server cannot put more than the window in flight."""
        server, client = pair(Config(window=2))
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0))
        flows = SNAP.categories["ports"]
        server.send(Chunk(category="ports", seq=0, entries=flows[:1]), 0)
        server.send(Chunk(category="ports", seq=1, entries=flows[1:2]), 0)
        assert not server.can_send_chunk
        with pytest.raises(LocalProtocolError, match="window"):
            server.send(Chunk(category="ports", seq=2, entries=flows[2:3]), 0)

    def test_client_refuses_window_overrun(self) -> None:
        """A server ignoring the window is a remote error on the client."""
        server, client = pair(Config(window=1))
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0))
        ports = SNAP.categories["ports"]
        first = server.send(Chunk(category="ports", seq=0, entries=ports[:1]), 0)
        server._credited = 1  # a broken server forgets the window
        second = server.send(Chunk(category="ports", seq=1, entries=ports[1:2]), 0)
        with pytest.raises(RemoteProtocolError, match="exceeds the window"):
            feed(client, first + second)

    def test_count_mismatch(self) -> None:
        """An End whose count disagrees with the chunks is refused."""
        server, client = pair()
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0))
        with pytest.raises(LocalProtocolError, match="counts 3 entries, 0 sent"):
            server.send(End(category="ports", count=3, digest="x"), 0)

    def test_category_order(self) -> None:
        """Categories stream in the negotiated order."""
        server, client = pair()
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0))
        with pytest.raises(LocalProtocolError, match="while ports is streaming"):
            server.send(End(category="flows", count=0, digest="x"), 0)


class TestDeadlines:
    def test_hello_deadline(self) -> None:
        """A server that hears no hello gives up after hello_timeout."""
        server = Connection(Side.SERVER, token=TOKEN, now=100.0, config=Config(hello_timeout=5))
        assert server.next_deadline() == 105.0
        assert server.check_deadlines(104.9) == b""
        with pytest.raises(SyncTimeout, match="hello deadline expired in state IDLE"):
            server.check_deadlines(105.0)
        assert server.state is State.ERROR

    def test_heartbeat_then_liveness(self) -> None:
        """Idle synced sides send heartbeats; a silent peer expires the liveness deadline."""
        cfg = Config(heartbeat_interval=1, liveness_timeout=3)
        server, client = pair(cfg)
        list(run_sync(server, client, SNAP))
        assert server.next_deadline() == 1.0
        beat = server.check_deadlines(1.0)
        assert feed(client, beat, 1.0) == []
        assert client.check_deadlines(2.5)  # the client beats too
        with pytest.raises(SyncTimeout, match="liveness"):
            server.check_deadlines(3.0)

    def test_own_stall_is_not_the_peers_silence(self) -> None:
        """Our process stalled (loop blocked, GIL starved) while the peer kept beating: the
        late check reads first instead of blaming the peer; the stall is counted."""
        server, client = pair(Config(heartbeat_interval=1, liveness_timeout=3),
                              client_config=Config(heartbeat_interval=1, liveness_timeout=100))
        list(run_sync(server, client, SNAP))
        waiting = b"".join(client.check_deadlines(float(t)) for t in range(1, 11))
        assert waiting  # ten heartbeats sit in the server's socket
        server.check_deadlines(10.0)  # its first look after 10 s: no SyncTimeout
        assert (server.stalls, server.longest_stall) == (1, 10.0)
        assert feed(server, waiting, 10.0) == []
        for t in (11.0, 12.0, 12.9):  # looking every heartbeat interval again: normal rule
            server.check_deadlines(t)
        with pytest.raises(SyncTimeout, match="liveness deadline expired in state SYNCED"):
            server.check_deadlines(13.0)
        assert server.stalls == 1

    def test_silent_peer_after_own_stall(self) -> None:
        """A peer that really is silent expires one heartbeat interval after our stall."""
        server, client = pair(Config(heartbeat_interval=1, liveness_timeout=3))
        list(run_sync(server, client, SNAP))
        assert server.check_deadlines(20.0)  # late: a heartbeat, no expiry
        assert server.next_deadline() == 21.0
        with pytest.raises(SyncTimeout, match="liveness"):
            server.check_deadlines(21.0)

    def test_progress_deadline_when_window_full(self) -> None:
        """A client that stops crediting expires the server's progress deadline."""
        cfg = Config(window=1, progress_timeout=4, liveness_timeout=100, heartbeat_interval=50)
        server, client = pair(cfg)
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0))
        server.send(Chunk(category="ports", seq=0, entries=SNAP.categories["ports"][:1]), 1.0)
        assert server.next_deadline() == 5.0
        with pytest.raises(SyncTimeout, match="progress"):
            server.check_deadlines(5.0)

    def test_apply_deadline(self) -> None:
        """An End without Applied arms the apply deadline instead of the progress one."""
        cfg = Config(apply_timeout=60, liveness_timeout=1000, heartbeat_interval=500)
        server, client = pair(cfg)
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0))
        server.send(End(category="ports", count=0, digest="x"), 2.0)
        assert server.next_deadline() == 62.0
        with pytest.raises(SyncTimeout, match="apply"):
            server.check_deadlines(62.0)

    def test_client_progress_deadline(self) -> None:
        """A client with credit to spare gives up on a server that stops sending."""
        cfg = Config(progress_timeout=4, liveness_timeout=100, heartbeat_interval=50)
        server, client = pair(cfg)
        feed(server, client.send(client.own_hello(), 0))
        feed(client, server.send(server.negotiate(), 0), 1.0)
        with pytest.raises(SyncTimeout, match="progress deadline expired in state SYNCING"):
            client.check_deadlines(5.0)

    def test_errors_are_protocol_errors(self) -> None:
        """SyncTimeout is a RemoteProtocolError, hence a ProtocolError."""
        assert issubclass(SyncTimeout, RemoteProtocolError)
        assert issubclass(RemoteProtocolError, ProtocolError)
