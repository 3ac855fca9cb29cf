"""What the supervisor does once flow-restore-wait is lifted, beside the client's deferred
conntrack replay (seconds at 100k entries, spent by the new vswitchd's main thread).

Polled in the database (:func:`when_lifted`, every 50 ms from the handover on);
once lifted, :class:`AfterLift` builds the final catch-up read (sorted and digested:
~1 s of Python at 100k conntrack entries, formerly after the client's Ready) and takes
the OpenFlow part of the verification's read-back.  The client changes no OpenFlow
state after the lift (it replays conntrack only) and the OpenFlow sockets are still
private; a Controller-table controller may write, and the verification leaves its
bridges out as before.  Conntrack, FDB and the rest are read after Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ovsndu.errors import OvsnduError
from ovsndu.model import Entry, Snapshot
from ovsndu.model.window import Settled
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import StateReader


async def when_lifted(db: str, lifted: Callable[[], None], every: float = 0.05) -> None:
    """Call *lifted* once flow-restore-wait is no longer set (polled in the database)."""
    def on() -> bool:
        with Ovsdb(db) as conn:
            return conn.flow_restore_wait()[0]

    with contextlib.suppress(OvsnduError):
        while await asyncio.to_thread(on):
            await asyncio.sleep(every)
        lifted()


class AfterLift:
    """The final read's build and the OpenFlow read-back of the new process *pid*."""

    def __init__(self, rundir: Path, db: str, pid: int, of_dir: Path, known: Snapshot):
        self.settled: Settled | None = None  # set once the final read has settled
        self._reader = StateReader(rundir, db, pid=pid, of_dir=of_dir, known=known)
        self._building: asyncio.Future[Snapshot] | None = None
        self._reading: asyncio.Future[dict[str, Sequence[Entry]]] | None = None

    def build(self) -> None:
        """Start building the final read (once; also for a rollback)."""
        if self._building is None and self.settled is not None:
            self._building = asyncio.ensure_future(asyncio.to_thread(self.settled.build))

    def lifted(self) -> None:
        """flow-restore-wait is lifted: build the final read, read OpenFlow back."""
        self.build()
        if self._reading is None:
            self._reading = asyncio.ensure_future(asyncio.to_thread(
                self._reader.openflow_known))
            self._reading.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def final(self) -> Snapshot | None:
        """The final read, built (None when it never settled)."""
        self.build()
        return await self._building if self._building is not None else None

    async def openflow(self) -> Mapping[str, Sequence[Entry]] | None:
        """The OpenFlow categories read back after the lift (None when not lifted)."""
        return await self._reading if self._reading is not None else None
