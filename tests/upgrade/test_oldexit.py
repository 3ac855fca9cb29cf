"""The exit hold's life within an upgrade (ovsndu.upgrade.oldexit): a hold that arrives
after the upgrade was cancelled is released, not left holding the old process's memory."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from ovsndu.upgrade import oldexit


class SlowHold:
    """Stands for an ExitHold whose taking outlasts a cancellation."""

    memory_held = True

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.sockets: list[int] = []
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


def test_a_hold_taken_after_a_cancel_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    hold = SlowHold()

    def slow_take(_pid: int) -> SlowHold:
        time.sleep(0.3)
        return hold

    monkeypatch.setattr(oldexit.ExitHold, "take", staticmethod(slow_take))
    run = SimpleNamespace(serving=SimpleNamespace(pid=1), record=SimpleNamespace(marks={}),
                          upgrade_id="test")

    async def cancelled() -> None:
        task = asyncio.ensure_future(oldexit.hold_old_exit(run))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not hold.released.is_set()  # still being taken
        await asyncio.sleep(0.5)

    asyncio.run(cancelled())
    assert hold.released.wait(2)
    assert run.record.marks == {"exit_hold.sockets": 0.0, "exit_hold.memory": 1.0}
