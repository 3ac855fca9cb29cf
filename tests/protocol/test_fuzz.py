"""Fuzzing both sides with malformed, truncated, mistyped, oversized and misordered frames.

Each hypothesis example draws a seed and generates many frames from it (hypothesis
drawing every byte would be far too slow for >100k frames).  For every frame a
fresh connection, brought to a live state by a valid prefix, is fed the frame in
random fragments and then end of stream.  The contract checked: only ProtocolError
subclasses escape, the receive buffer never exceeds its cap, and the stream always
ends in a clear protocol error (or, after a valid Abort, in PeerClosed).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovsndu.errors import ProtocolError
from ovsndu.protocol import (
    NEED_DATA,
    Abort,
    Applied,
    Chunk,
    Commit,
    Config,
    Connection,
    Credit,
    End,
    Handover,
    Heartbeat,
    PeerClosed,
    Ready,
    Side,
    State,
)
from ovsndu.protocol.codec import Encoder
from tests.protocol.helpers import TOKEN, snapshot

CONFIG = Config(max_frame=64 * 1024, read_size=4096)
FRAMES_PER_EXAMPLE = 700
EXAMPLES = 50  # three tests: 3 x 50 x 700 = 105,000 frames
SNAP = snapshot(4)
ENCODER = Encoder(CONFIG.max_frame)
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
counted = {"frames": 0}


def _handshake() -> tuple[bytes, bytes]:
    server = Connection(Side.SERVER, token=TOKEN, now=0, config=CONFIG)
    client = Connection(Side.CLIENT, token=TOKEN, now=0, config=CONFIG)
    hello = client.send(client.own_hello(), 0)
    server.receive_data(hello, 0)
    server.next_event()
    return hello, server.send(server.negotiate(), 0)


CLIENT_HELLO, SERVER_HELLO = _handshake()


def server_at(state: State) -> Connection:
    """A server in IDLE or SYNCING."""
    conn = Connection(Side.SERVER, token=TOKEN, now=0, config=CONFIG)
    if state is State.SYNCING:
        conn.receive_data(CLIENT_HELLO, 0)
        conn.next_event()
        conn.send(conn.negotiate(), 0)
    return conn


def client_at(state: State) -> Connection:
    """A client in HELLO_SENT or SYNCING."""
    conn = Connection(Side.CLIENT, token=TOKEN, now=0, config=CONFIG)
    conn.send(conn.own_hello(), 0)
    if state is State.SYNCING:
        conn.receive_data(SERVER_HELLO, 0)
        conn.next_event()
    return conn


def valid_messages() -> list[bytes]:
    ports = SNAP.categories["ports"]
    msgs: list[Any] = [
        Chunk(category="ports", seq=0, entries=ports),
        Chunk(category="flows", seq=0, entries=SNAP.categories["flows"]),
        Chunk(category="ports", seq=5, entries=ports[:1]),
        End(category="ports", count=len(ports), digest=SNAP.digest("ports")),
        End(category="ports", count=0, digest="x"),
        Credit(seq=0), Applied(category="ports", count=0, digest="d"),
        Handover(), Ready(), Commit(), Heartbeat(), Abort(reason="fuzz"),
    ]
    return [ENCODER.encode(m) for m in msgs] + [CLIENT_HELLO, SERVER_HELLO]


VALID = valid_messages()


def random_object(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 1:
        return "".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randrange(12)))
    if kind == 2:
        return rng.randbytes(rng.randrange(40))
    if kind == 3:
        return rng.random() * 1e6
    if kind == 4:
        return rng.choice([None, True, False])
    if kind == 5:
        if rng.random() < 0.3:
            return msgpack.Timestamp(rng.randrange(2**32))  # the one predefined extension
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(4))
    if kind == 6:
        return rng.randrange(12)
    if kind == 7:
        return [random_object(rng, depth + 1) for _ in range(rng.randrange(6))]
    if kind == 8:
        keys = ["category", "seq", "version", "token", "window", "capabilities"]
        return {rng.choice(keys): random_object(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [rng.randrange(1, 11), *(random_object(rng, depth + 1) for _ in range(rng.randrange(5)))]


def mistyped_chunk(rng: random.Random) -> bytes:
    """A chunk whose rows are almost right: a wrong type, length or container."""
    row = list(SNAP.categories["ports"][0].to_dict().values())
    choice = rng.randrange(5)
    if choice == 0:
        row[rng.randrange(len(row))] = random_object(rng)
    elif choice == 1:
        row = row[: rng.randrange(len(row))]
    elif choice == 2:
        row.append(random_object(rng))
    rows: Any = [row] if choice != 3 else [{"bridge": "br"}]
    if choice == 4:
        rows = random_object(rng)
    return frame(msgpack.packb([2, "ports", 0, rows], use_bin_type=True))


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def generate(rng: random.Random) -> bytes:
    """One hostile input: a single malformed frame, or a few frames in a row."""
    kind = rng.randrange(8)
    if kind == 0:
        return frame(rng.randbytes(rng.randrange(1, 300)))
    if kind == 1:
        data = rng.choice(VALID)
        return data[: rng.randrange(len(data))]
    if kind == 2:
        data = bytearray(rng.choice(VALID))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(4, len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 3:
        length = rng.choice([CONFIG.max_frame + 1, 2**32 - 1, rng.randint(CONFIG.max_frame, 2**31)])
        return struct.pack(">I", length) + rng.randbytes(rng.randrange(5000))
    if kind == 4:
        return frame(msgpack.packb(random_object(rng), use_bin_type=True))
    if kind == 5:
        return mistyped_chunk(rng)
    if kind == 6:
        return b"".join(rng.choice(VALID) for _ in range(rng.randint(2, 5)))
    return struct.pack(">I", 0) + rng.randbytes(rng.randrange(8))


def attack(make: Callable[[], Connection], data: bytes, rng: random.Random) -> None:
    """Feed *data* in random fragments, then end of stream; check the contract."""
    conn = make()
    counted["frames"] += 1
    try:
        pos = 0
        while pos < len(data):
            size = rng.randint(1, CONFIG.read_size)
            conn.receive_data(data[pos : pos + size], 1.0)
            pos += size
            assert conn.buffered <= CONFIG.max_buffer
            _drain(conn)
        conn.receive_data(b"", 2.0)
        _drain(conn)
    except ProtocolError as exc:
        message = str(exc)
    else:
        assert conn.state in (State.ABORTED, State.COMMITTED), conn.state
        return
    assert message, "a protocol error must say what went wrong"
    assert conn.state is State.ERROR


def _drain(conn: Connection) -> None:
    for _ in range(100):
        event = conn.next_event()
        if event is NEED_DATA or isinstance(event, PeerClosed):
            return


class TestFuzz:
    @FUZZ
    @given(seed=st.integers(0, 2**64))
    def test_server_never_crashes(self, seed: int) -> None:
        """Hostile bytes at a server, before and after the hello."""
        rng = random.Random(seed)
        for _ in range(FRAMES_PER_EXAMPLE):
            state = rng.choice([State.IDLE, State.SYNCING])
            attack(lambda state=state: server_at(state), generate(rng), rng)

    @FUZZ
    @given(seed=st.integers(0, 2**64))
    def test_client_never_crashes(self, seed: int) -> None:
        """Hostile bytes at a client, before and after the server's hello."""
        rng = random.Random(seed)
        for _ in range(FRAMES_PER_EXAMPLE):
            state = rng.choice([State.HELLO_SENT, State.SYNCING])
            attack(lambda state=state: client_at(state), generate(rng), rng)

    @FUZZ
    @given(seed=st.integers(0, 2**64))
    def test_out_of_order_and_mistyped(self, seed: int) -> None:
        """Valid messages in wrong orders and chunks with mistyped rows, at both sides."""
        rng = random.Random(seed)
        for _ in range(FRAMES_PER_EXAMPLE):
            if rng.random() < 0.5:
                data = b"".join(rng.choice(VALID) for _ in range(rng.randint(1, 4)))
            else:
                data = mistyped_chunk(rng)
            side = rng.choice([lambda: server_at(State.SYNCING), lambda: client_at(State.SYNCING)])
            attack(side, data, rng)


def test_fuzz_volume() -> None:
    """The fuzz tests above generate at least 100,000 frames in all."""
    assert 3 * EXAMPLES * FRAMES_PER_EXAMPLE >= 100_000
