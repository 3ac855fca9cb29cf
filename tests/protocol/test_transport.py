"""The asyncio transport over real Unix sockets in temporary directories."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ovsndu.errors import LocalProtocolError, RemoteProtocolError, SyncAborted, SyncTimeout
from ovsndu.model import CATEGORIES, Entry, category_digest
from ovsndu.protocol import Config, State
from ovsndu.protocol.transport import (
    ClientResult,
    ServerResult,
    receive_state,
    serve_state,
)
from tests.protocol.helpers import TOKEN, snapshot

T = TypeVar("T")
SNAP = snapshot(40)
FAST = Config(chunk_entries=7, window=2, heartbeat_interval=0.05, liveness_timeout=0.5,
              hello_timeout=0.5, progress_timeout=0.5)


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro
    return asyncio.run(bounded())


def digest_of(category: str, entries: tuple[Entry, ...]) -> str:
    return category_digest(entries)


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "sync.sock"


async def wait_for_socket(path: Path) -> None:
    while not path.exists():
        await asyncio.sleep(0.005)


async def both(path: Path, *, server_kw: dict[str, Any] | None = None,
               client_kw: dict[str, Any] | None = None,
               apply: Callable[[str, tuple[Entry, ...]], Any] = digest_of,
               ) -> tuple[ServerResult, ClientResult]:
    server = asyncio.create_task(serve_state(
        path, SNAP, TOKEN, expected_uid=os.getuid(), **(server_kw or {"config": FAST})))
    await wait_for_socket(path)
    client = await receive_state(path, TOKEN, apply, **(client_kw or {"config": FAST}))
    return await server, client


class TestWholeUpgrade:
    def test_sync_handover_commit(self, path: Path) -> None:
        """Every category crosses a real socket; handover, ready and commit follow."""
        async def main() -> None:
            sres, cres = await both(path)
            assert cres.snapshot.categories == SNAP.categories
            assert cres.snapshot.digests() == SNAP.digests()
            assert sres.applied == SNAP.digests()
            assert sres.entries == sum(SNAP.counts().values())
            await sres.session.handover()
            await cres.session.wait_handover(timeout=2)
            await cres.session.ready()
            await sres.session.wait_ready(timeout=2)
            await sres.session.commit()
            await cres.session.wait_commit(timeout=2)
            assert sres.session.state is cres.session.state is State.COMMITTED
            await sres.session.close()
            await cres.session.close()
            assert not path.exists()  # the listener is gone once the client is in
        run(main())

    def test_on_sent_once_everything_is_sent(self, path: Path) -> None:
        """The server's on_sent runs once, when the last category is sent and before the
        client has acknowledged it (the supervisor writes its snapshot file then)."""
        events: list[str] = []

        async def apply(category: str, entries: tuple[Entry, ...]) -> str:
            await asyncio.sleep(0.05 if category == CATEGORIES[-1] else 0)
            events.append(category)
            return category_digest(entries)

        async def main() -> None:
            sres, cres = await both(path, apply=apply, server_kw={
                "config": FAST, "on_sent": lambda: events.append("sent")})
            assert events.count("sent") == 1
            assert events.index("sent") < events.index(CATEGORIES[-1])
            await sres.session.close()
            await cres.session.close()
        run(main())

    def test_async_apply_and_idle_heartbeats(self, path: Path) -> None:
        """A coroutine apply works, and a long pause after sync is kept alive by heartbeats."""
        async def apply(category: str, entries: tuple[Entry, ...]) -> str:
            await asyncio.sleep(0.01)
            return category_digest(entries)

        async def main() -> None:
            sres, cres = await both(path, apply=apply)
            await asyncio.sleep(1.0)  # two liveness timeouts
            await sres.session.handover()
            await cres.session.wait_handover(timeout=2)
            await sres.session.close()
            await cres.session.close()
        run(main())

    def test_socket_permissions(self, path: Path) -> None:
        """The directory is 0700 and the socket 0600 while listening."""
        async def main() -> None:
            task = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST,
                                                   accept_timeout=5))
            await wait_for_socket(path)
            assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        run(main())

    def test_client_started_first_waits_for_the_listener(self, path: Path) -> None:
        """A client that comes before the server listens — the socket missing, then bound
        but not listening (refused) — connects once it listens, and syncs; with no
        listener at all it gives up after its connect timeout."""
        import socket

        async def main() -> None:
            client = asyncio.create_task(receive_state(path, TOKEN, digest_of, config=FAST,
                                                       connect_timeout=5))
            await asyncio.sleep(0.2)  # nothing at the path yet
            path.parent.mkdir(mode=0o700, exist_ok=True)
            bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bound.bind(str(path))  # bound, not listening: connect() is refused
            await asyncio.sleep(0.2)
            assert not client.done()
            bound.close()
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(),
                                                     config=FAST))
            cres = await client
            sres = await server
            assert cres.snapshot.categories == SNAP.categories
            await sres.session.close()
            await cres.session.close()
            started = time.monotonic()
            with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
                await receive_state(path.with_name("none.sock"), TOKEN, digest_of,
                                    config=FAST, connect_timeout=0.3)
            assert time.monotonic() - started >= 0.3
        run(main())

    def test_open_directory_refused(self, tmp_path: Path) -> None:
        """A socket directory others can enter is refused."""
        directory = tmp_path / "open"
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)
        with pytest.raises(LocalProtocolError, match="mode 0700"):
            run(serve_state(directory / "s.sock", SNAP, TOKEN, os.getuid()))


class TestRefusals:
    def test_wrong_token_does_not_disturb(self, path: Path) -> None:
        """A stranger with a wrong token is refused and counted; the real client then syncs."""
        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST))
            await wait_for_socket(path)
            with pytest.raises(SyncAborted, match="refused: authentication failed") as info:
                await receive_state(path, b"wrong" * 4, digest_of, config=FAST)
            assert info.value.by_peer
            _idle_reader, idle_writer = await asyncio.open_unix_connection(str(path))
            cres = await receive_state(path, TOKEN, digest_of, config=FAST)
            sres = await server
            assert sres.refused >= 1
            assert cres.snapshot.categories == SNAP.categories
            idle_writer.close()
            await sres.session.close()
            await cres.session.close()
        run(main())

    def test_wrong_uid(self, path: Path) -> None:
        """A peer whose SO_PEERCRED uid is not the expected one is refused."""
        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid() + 4242,
                                                     config=FAST, accept_timeout=1.0))
            await wait_for_socket(path)
            with pytest.raises(SyncAborted, match=f"peer uid {os.getuid()}"):
                await receive_state(path, TOKEN, digest_of, config=FAST)
            with pytest.raises(SyncTimeout, match="accept"):
                await server
        run(main())

    def test_wrong_pid(self, path: Path) -> None:
        """With an expected pid, a peer of the right uid but another pid is refused."""
        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), 1,
                                                     config=FAST, accept_timeout=1.0))
            await wait_for_socket(path)
            with pytest.raises(SyncAborted, match="not expected"):
                await receive_state(path, TOKEN, digest_of, config=FAST)
            server.cancel()
        run(main())

    def test_incompatible_version(self, path: Path) -> None:
        """No common version: both sides fail, and both errors show both ranges."""
        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST))
            await wait_for_socket(path)
            newer = Config(min_version=5, max_version=6, hello_timeout=1)
            both_ranges = r"server supports 1\.\.1, client supports 5\.\.6"
            with pytest.raises(SyncAborted, match=both_ranges):
                await receive_state(path, TOKEN, digest_of, config=newer)
            with pytest.raises(RemoteProtocolError, match=r"1\.\.1.*5\.\.6"):
                await server
        run(main())

    def test_client_checks_server_uid(self, path: Path) -> None:
        """The client refuses a server that runs under another uid."""
        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST,
                                                     accept_timeout=1.0))
            await wait_for_socket(path)
            with pytest.raises(RemoteProtocolError, match="expected"):
                await receive_state(path, TOKEN, digest_of, config=FAST,
                                    expected_uid=os.getuid() + 1)
            server.cancel()
        run(main())


class TestAbortPaths:
    def test_apply_failure_aborts(self, path: Path) -> None:
        """An exception from apply aborts the sync; the server sees the reason."""
        def apply(category: str, entries: tuple[Entry, ...]) -> str:
            if category == "flows":
                raise RuntimeError("ofctl exploded")
            return category_digest(entries)

        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST))
            await wait_for_socket(path)
            with pytest.raises(RuntimeError):
                await receive_state(path, TOKEN, apply, config=FAST)
            with pytest.raises(SyncAborted, match="ofctl exploded") as info:
                await server
            assert info.value.by_peer
        run(main())

    def test_digest_mismatch_aborts(self, path: Path) -> None:
        """A read-back digest that differs makes the server abort; the client learns why."""
        def apply(category: str, entries: tuple[Entry, ...]) -> str:
            return "0" * 64 if category == "conntrack" else category_digest(entries)

        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST))
            await wait_for_socket(path)
            cres = await receive_state(path, TOKEN, apply, config=FAST)
            with pytest.raises(SyncAborted, match="digest mismatch after apply: conntrack"):
                await server
            with pytest.raises(SyncAborted, match="digest mismatch") as info:
                await cres.session.wait_handover(timeout=2)
            assert info.value.by_peer
            await cres.session.close()
        run(main())

    @pytest.mark.parametrize("stage", ["synced", "handover", "ready"])
    def test_server_aborts(self, path: Path, stage: str) -> None:
        """The server may abort after the sync, after handover and after ready."""
        async def main() -> None:
            sres, cres = await both(path)
            if stage in ("handover", "ready"):
                await sres.session.handover()
                await cres.session.wait_handover(timeout=2)
            if stage == "ready":
                await cres.session.ready()
                await sres.session.wait_ready(timeout=2)
            await sres.session.abort(f"operator gave up at {stage}")
            waiter = (cres.session.wait_handover if stage == "synced"
                      else cres.session.wait_commit)
            with pytest.raises(SyncAborted, match=f"gave up at {stage}"):
                await waiter(timeout=2)
            await cres.session.close()
        run(main())

    def test_client_aborts_in_handover(self, path: Path) -> None:
        """A client that fails to take over aborts; the server's wait_ready raises."""
        async def main() -> None:
            sres, cres = await both(path)
            await sres.session.handover()
            await cres.session.wait_handover(timeout=2)
            await cres.session.abort("datapath busy")
            with pytest.raises(SyncAborted, match="datapath busy"):
                await sres.session.wait_ready(timeout=2)
            await sres.session.close()
        run(main())

    def test_ready_timeout(self, path: Path) -> None:
        """A client that never says ready makes wait_ready time out."""
        async def main() -> None:
            sres, cres = await both(path)
            await sres.session.handover()
            with pytest.raises(SyncTimeout, match="Ready"):
                await sres.session.wait_ready(timeout=0.2)
            await sres.session.close()
            await cres.session.close()
        run(main())

    def test_silent_client_times_out(self, path: Path) -> None:
        """A connected client that never says hello is dropped; serve_state keeps waiting."""
        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST,
                                                     accept_timeout=1.5))
            await wait_for_socket(path)
            reader, writer = await asyncio.open_unix_connection(str(path))
            assert await reader.read() != b""  # an Abort naming the hello deadline, then EOF
            writer.close()
            cres = await receive_state(path, TOKEN, digest_of, config=FAST)
            sres = await server
            assert sres.refused == 1
            await sres.session.close()
            await cres.session.close()
        run(main())

    def test_stuck_client_times_out(self, path: Path) -> None:
        """A client that stops reading mid-sync: the server fails with a timeout, no hang."""
        async def stuck(category: str, entries: tuple[Entry, ...]) -> str:
            await asyncio.sleep(30)
            return ""

        async def main() -> None:
            cfg = Config(chunk_entries=3, window=1, heartbeat_interval=0.05, apply_timeout=0.5,
                         progress_timeout=0.5, liveness_timeout=1.0)
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=cfg))
            await wait_for_socket(path)
            client = asyncio.create_task(receive_state(path, TOKEN, stuck, config=cfg))
            with pytest.raises(SyncTimeout, match=r"apply|progress"):
                await server
            with pytest.raises(SyncAborted, match="deadline expired"):
                await client
        run(main())

    def test_cancelled_client_aborts(self, path: Path) -> None:
        """Cancelling receive_state sends Abort; the server does not hang."""
        async def slow(category: str, entries: tuple[Entry, ...]) -> str:
            await asyncio.sleep(30)
            return ""

        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST))
            await wait_for_socket(path)
            client = asyncio.create_task(receive_state(path, TOKEN, slow, config=FAST))
            await asyncio.sleep(0.1)
            client.cancel()
            with pytest.raises(SyncAborted, match="CancelledError"):
                await server
        run(main())


def test_awaitable_type() -> None:
    """ApplyCallback accepts plain and coroutine functions (a typing smoke test)."""
    func: Callable[[str, tuple[Entry, ...]], str | Awaitable[str]] = digest_of
    assert func("ports", ()) == category_digest(())


class TestApplyAll:
    def test_apply_all_acknowledges_every_category(self, path: Path) -> None:
        """apply_all gets the whole state once, and its digests are acknowledged."""
        seen: list[int] = []

        def apply_all(snap: Any) -> dict[str, str]:
            seen.append(sum(snap.counts().values()))
            return snap.digests()

        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST))
            await wait_for_socket(path)
            cres = await receive_state(path, TOKEN, apply_all=apply_all, config=FAST)
            sres = await server
            assert seen == [sum(SNAP.counts().values())]
            assert sres.applied == SNAP.digests()
            await sres.session.close()
            await cres.session.close()
        run(main())


class TestStalledLoop:
    def test_blocked_server_loop_reads_before_judging(self, path: Path) -> None:
        """The server's event loop blocked for three times its liveness timeout (heavy work
        on the loop thread) while the client, on its own loop, kept beating: once the loop
        runs again the server reads those heartbeats and the upgrade goes on."""
        server_cfg = Config(heartbeat_interval=0.05, liveness_timeout=0.5)
        client_cfg = Config(heartbeat_interval=0.05, liveness_timeout=30)
        failures: list[BaseException] = []

        def client() -> None:
            async def main() -> None:
                cres = await receive_state(path, TOKEN, digest_of, config=client_cfg)
                async with cres.session as session:
                    await session.wait_handover(timeout=10)
                    await session.ready()
                    await session.wait_commit(timeout=10)
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by the assertion below
                failures.append(exc)

        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(),
                                                     config=server_cfg))
            await wait_for_socket(path)
            thread = threading.Thread(target=client)
            thread.start()
            sres = await server
            time.sleep(1.5)  # the loop blocked: what is under test
            await asyncio.sleep(0.2)
            await sres.session.handover()
            await sres.session.wait_ready(timeout=5)
            await sres.session.commit()
            assert sres.session.conn.stalls == 1  # seen, logged as sync.stalled
            await sres.session.close()
            await asyncio.to_thread(thread.join, 10)
            assert failures == []
        run(main())

    def test_apply_all_snapshot_built_off_the_loop(self, path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """The client builds apply_all's snapshot in a worker thread (seconds at 300k
        entries: a loop blocked that long sends no heartbeat)."""
        from ovsndu.model import Snapshot

        built_on: list[str] = []
        original = Snapshot.build.__func__  # type: ignore[attr-defined]

        def build(cls: type[Snapshot], *args: Any) -> Snapshot:
            built_on.append(threading.current_thread().name)
            return original(cls, *args)  # type: ignore[no-any-return]

        monkeypatch.setattr(Snapshot, "build", classmethod(build))

        async def main() -> None:
            server = asyncio.create_task(serve_state(path, SNAP, TOKEN, os.getuid(), config=FAST))
            await wait_for_socket(path)
            cres = await receive_state(path, TOKEN, apply_all=lambda s: s.digests(), config=FAST)
            await (await server).session.close()
            await cres.session.close()
        run(main())
        assert built_on and threading.main_thread().name not in built_on
