"""Where the supervisor's and the client's memory goes at scale, on synthetic entries.

No vswitchd: entries shaped like the readers' (flows with their base64 flow-mod, the
conntrack mix, FDB), then the steps of an upgrade that hold or build state, each
measured with :mod:`tracemalloc` (Python allocations: what the step keeps, and its peak
above what was held before it):

* supervisor: the state keeper's snapshot, a read (entry lists) and its
  :class:`Snapshot`, the crash-recovery snapshot file (one JSON text as before, and
  streamed), the sync stream to a client process, the final read and its build, the
  delta and its file;
* client (a second process, over the real sync channel): the received state and the
  snapshot ``apply_all`` gets.

    .venv/bin/python -m benchmarks.memory [--flows 200000] [--conntrack 100000]
                                          [--fdb 10000] [--json OUT]

Not covered: the rehearsal's read-back and the restore plan's encoded bundles (they
need a vswitchd), ovs-ofctl's own memory, and what the allocator keeps from the OS
beyond Python's allocations (RSS is reported beside).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import finish_sync
from ovsndu.model import CATEGORIES, Conntrack, Entry, FdbEntry, Flow, Snapshot, VswitchdInfo
from ovsndu.model.delta import delta_between
from ovsndu.model.window import apply_window
from ovsndu.protocol.transport import receive_state, serve_state
from ovsndu.upgrade.history import write_private, write_snapshot

MIB = 2**20


def flows(n: int, seed: int = 0) -> list[Entry]:
    """*n* rules like benchmarks.scale's, each with a flow-mod's worth of base64."""
    out: list[Entry] = []
    for i in range(n):
        bridge, table = i % 4, i % 4
        wire = base64.b64encode((i * 7919 + seed).to_bytes(8, "big") * 15).decode()
        out.append(Flow(
            bridge=f"br{bridge}", table=table, cookie="0x0", priority=10 + (i >> 16) % 30,
            match=f"tcp,nw_src=172.{16 + bridge}.{(i >> 8) & 255}.{i & 255},"
                  f"tp_dst={1 + (i >> 8) % 60000}",
            actions=f"goto_table:{table + 1}" if table < 3 else f"group:{1 + i % 100}",
            duration=float(seed + 100), n_packets=0, n_bytes=0, idle_age=seed + 100,
            wire=wire))
    return out


def conntrack(n: int, shift: int = 0) -> list[Entry]:
    """*n* entries: TCP established, UDP, ICMP, over zones 100-107."""
    out: list[Entry] = []
    for j in range(n):
        i = j + shift
        a, b, c = i >> 16 & 255, i >> 8 & 255, i & 255
        kind = i % 5
        if kind < 2:
            out.append(Conntrack(
                protocol="tcp", zone=100 + i % 8, state_orig="ESTABLISHED",
                state_reply="ESTABLISHED", timeout=86000,
                orig=f"src=10.{a}.{b}.{c},dst=10.200.0.1,sport={1024 + i % 60000},dport=80",
                reply=f"src=10.200.0.1,dst=10.{a}.{b}.{c},sport=80,dport={1024 + i % 60000}"))
        elif kind < 4:
            out.append(Conntrack(
                protocol="udp", zone=100 + i % 8, timeout=50,
                orig=f"src=10.{a}.{b}.{c},dst=10.200.0.2,sport={1024 + i % 60000},dport=53",
                reply=f"src=10.200.0.2,dst=10.{a}.{b}.{c},sport=53,dport={1024 + i % 60000}"))
        else:
            out.append(Conntrack(
                protocol="icmp", zone=100 + i % 8, timeout=20,
                orig=f"src=10.{a}.{b}.{c},dst=10.200.0.3,id={i % 65536},type=8,code=0",
                reply=f"src=10.200.0.3,dst=10.{a}.{b}.{c},id={i % 65536},type=0,code=0"))
    return out


def fdb(n: int) -> list[Entry]:
    """*n* learned MACs on br1."""
    return [FdbEntry(bridge="br1", port=str(1 + i % 8), vlan=0, age=i % 300,
                     mac=f"02:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01")
            for i in range(n)]


def read(n_flows: int, n_ct: int, n_fdb: int, seed: int = 0) -> dict[str, list[Entry]]:
    """What StateReader.snapshot gathers before its build."""
    cats: dict[str, list[Entry]] = {name: [] for name in CATEGORIES}
    cats["flows"] = flows(n_flows, seed)
    cats["conntrack"] = conntrack(n_ct, shift=seed * 1000)
    cats["fdb"] = fdb(n_fdb)
    return cats


class Stages:
    """Each step's kept memory and peak above what was held before it (MiB)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        began = time.perf_counter()
        out = fn()
        current, peak = tracemalloc.get_traced_memory()
        self.rows[name] = {"kept_mib": round((current - base) / MIB, 1),
                           "peak_above_mib": round((peak - base) / MIB, 1),
                           "held_after_mib": round(current / MIB, 1),
                           "seconds": round(time.perf_counter() - began, 2)}
        return out


def rss_mib() -> dict[str, float]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                fields[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return fields


async def client_main(path: str, token: bytes) -> None:
    tracemalloc.start()
    stages = Stages()
    held: list[Snapshot] = []

    def apply_all(snap: Snapshot) -> dict[str, str]:
        held.append(snap)  # the client keeps it for its plan
        stages.rows["received+apply_all snapshot"] = {
            "held_mib": round(tracemalloc.get_traced_memory()[0] / MIB, 1),
            "peak_mib": round(tracemalloc.get_traced_memory()[1] / MIB, 1)}
        return snap.digests()

    result = await receive_state(path, token, apply_all=apply_all)
    current, peak = tracemalloc.get_traced_memory()
    stages.rows["after receive_state"] = {"held_mib": round(current / MIB, 1),
                                          "peak_mib": round(peak / MIB, 1)}
    await result.session.wait_handover(timeout=600)
    await result.session.ready()
    await result.session.wait_commit(timeout=600)
    await result.session.close()
    print(json.dumps({"stages": stages.rows, "rss": rss_mib()}))


async def server_main(n_flows: int, n_ct: int, n_fdb: int) -> dict[str, Any]:
    tracemalloc.start()
    st = Stages()
    info = VswitchdInfo(pid=1, version="3.1.0")
    keeper = st.run("keeper's snapshot (read and build)", lambda: Snapshot.build(
        info, read(n_flows, n_ct, n_fdb, 2)))
    cats = st.run("read (entry lists)", lambda: read(n_flows, n_ct, n_fdb))
    snap = st.run("Snapshot.build", lambda c=cats: Snapshot.build(info, c))
    del cats
    st.rows["held with the keeper's copy (before)"] = {
        "held_after_mib": round(tracemalloc.get_traced_memory()[0] / MIB, 1)}
    keeper = snap  # the keeper adopts the upgrade's snapshot (now)
    st.rows["held once the keeper adopted it (now)"] = {
        "held_after_mib": round(tracemalloc.get_traced_memory()[0] / MIB, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        st.run("snapshot file, one JSON text (before)", lambda: write_private(
            Path(tmp) / "a.json", json.dumps(snap.to_dict()).encode()))
        st.run("snapshot file, streamed (now)", lambda: write_snapshot(Path(tmp) / "b.json",
                                                                       snap))
        same = (Path(tmp) / "a.json").read_bytes() == (Path(tmp) / "b.json").read_bytes()
        path = Path(tmp) / "sync" / "s.sock"
        token = secrets.token_bytes(32)
        digests = snap.digests()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        server = asyncio.create_task(serve_state(path, snap, token, os.getuid(),
                                                 digests=digests, accept_timeout=60))
        while not path.exists():
            await asyncio.sleep(0.01)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.memory", "--client", str(path),
            "--token", token.hex(), stdout=asyncio.subprocess.PIPE)
        began = time.perf_counter()
        result = await server
        current, peak = tracemalloc.get_traced_memory()
        st.rows["sync stream (server)"] = {"kept_mib": round((current - base) / MIB, 1),
                                           "peak_above_mib": round((peak - base) / MIB, 1),
                                           "held_after_mib": round(current / MIB, 1),
                                           "seconds": round(time.perf_counter() - began, 2)}
        # The session is open: as in the runner, nothing heavy on the event loop (these
        # steps on the loop stalled it 36 s at 200k and the client gave up, rightly).
        final_cats = await asyncio.to_thread(st.run, "final read (entry lists)",
                                             lambda: read(n_flows, n_ct, n_fdb, 1))
        final = await asyncio.to_thread(st.run, "final read's build (settle)",
                                        lambda c=final_cats: apply_window(
                                            Snapshot.build(info, c), [], {})[0])
        del final_cats
        delta = await asyncio.to_thread(st.run, "delta_between",
                                        lambda: delta_between(snap, final))
        await asyncio.to_thread(st.run, "catch-up file (delta JSON)", lambda: (
            Path(tmp) / "c.json").write_text(json.dumps(delta.to_dict())))
        client = await finish_sync(result, proc, 600)
    assert keeper is snap
    return {"flows": n_flows, "conntrack": n_ct, "fdb": n_fdb,
            "load_average_1min": os.getloadavg()[0], "snapshot_files_equal": same,
            "supervisor": st.rows, "supervisor_rss": rss_mib(),
            "client": client["stages"], "client_rss": client["rss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--conntrack", type=int, default=100_000)
    parser.add_argument("--fdb", type=int, default=10_000)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    if args.client:
        asyncio.run(client_main(args.client, bytes.fromhex(args.token)))
        return
    figures = asyncio.run(server_main(args.flows, args.conntrack, args.fdb))
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
