"""The embedded default job: a private OVS sandbox holding sample state, and its snapshot."""

from __future__ import annotations

import time

from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sample import populate
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.render import snapshot_table


def run_demo(*, keep: bool = False) -> int:
    """Start a sandbox, populate every category, print the snapshot as a table."""
    with Sandbox() as sb:
        print(f"sandbox: {sb.rundir} (dummy datapath), vswitchd pid {sb.vswitchd_pid}")
        populate(sb)
        started = time.monotonic()
        snap = read_snapshot(sb.rundir, sb.db)
        elapsed = time.monotonic() - started
        print(snapshot_table(snap))
        print(f"\nsnapshot read in {elapsed * 1000:.1f} ms")
        if keep:
            input("press Enter to stop the sandbox ")
    return 0
