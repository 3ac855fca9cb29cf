"""End-to-end throughput of the sync channel over a real Unix socket.

The server (this process) streams a snapshot of conntrack and flow entries to a
client in a separate process (this script with ``--client``), which decodes every
chunk into model entries and acknowledges each category.  Timed: from the client's
connection to the last acknowledgement (encode, send, receive, decode, credit,
acknowledge).  Not timed: building the snapshot and its digests (the server is
given them, as a runner would be); the client's apply callback returns the digest
the parent computed, so digest cost stays out of the channel figure (``--verify``
makes the client recompute every digest, timed).

    .venv/bin/python benchmarks/sync_throughput.py [--entries 1000000] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import finish_sync
from ovsndu.model import Conntrack, Entry, Flow, Snapshot, VswitchdInfo, category_digest
from ovsndu.protocol import Config
from ovsndu.protocol.transport import receive_state, serve_state


def _rss_mib() -> float:
    """Peak RSS since the last _reset_peak() (VmHWM; ru_maxrss survives exec, so not that)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS
        f.write("5")


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def conntrack(i: int) -> Conntrack:
    a, b, c = i >> 16 & 255, i >> 8 & 255, i & 255
    return Conntrack(
        protocol="tcp",
        orig=f"src=10.{a}.{b}.{c},dst=172.16.0.1,sport={1024 + i % 60000},dport=443",
        reply=f"src=172.16.0.1,dst=10.{a}.{b}.{c},sport=443,dport={1024 + i % 60000}",
        zone=i % 16,
        mark=0,
        labels="0x0",
        state_orig="ESTABLISHED",
        state_reply="ESTABLISHED",
        timeout=431999,
    )


def flow(i: int) -> Flow:
    a, b, c = i >> 16 & 255, i >> 8 & 255, i & 255
    return Flow(
        bridge="br-int",
        table=i % 64,
        cookie=f"{0x1000 + i:#x}",
        priority=100 + i % 1000,
        match=f"ip,reg14={i % 48 + 1},metadata={i % 7 + 1},nw_dst=10.{a}.{b}.{c}",
        actions=f"set_field:{i % 4096}->reg15,resubmit(,{(i + 1) % 64})",
        duration=1234.5,
        n_packets=i * 3,
        n_bytes=i * 400,
        idle_age=i % 100,
        hard_age=i % 100,
    )


def build(n: int) -> Snapshot:
    cats: dict[str, list[Entry]] = {
        "ports": [], "tunnel_neighbors": [], "meters": [], "groups": [], "tlv_mappings": [],
        "fdb": [], "routes": [],
        "conntrack": [conntrack(i) for i in range(n // 2)],
        "flows": [flow(i) for i in range(n - n // 2)],
    }
    return Snapshot.build(VswitchdInfo(pid=1, version="3.3.0"), cats)


async def client_main(path: str, token: bytes, digests_file: str, verify: bool) -> None:
    digests = json.loads(Path(digests_file).read_text())
    counts: dict[str, int] = {}

    def apply(category: str, entries: tuple[Entry, ...]) -> str:
        counts[category] = len(entries)
        return category_digest(entries) if verify else str(digests[category])

    started, cpu = time.perf_counter(), time.process_time()
    result = await receive_state(path, token, apply)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await result.session.wait_handover(timeout=30)
    await result.session.ready()
    await result.session.wait_commit(timeout=30)
    await result.session.close()
    print(json.dumps({"client_seconds": elapsed, "client_cpu_seconds": cpu,
                      "client_peak_rss_mib": _rss_mib(),
                      "entries": sum(counts.values())}))


async def server_main(n: int, verify: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    snap = build(n)
    digests = snap.digests()
    setup = time.perf_counter() - t0
    if os.environ.get("BENCH_GC_FREEZE"):
        import gc

        gc.freeze()
    rss_before = _current_rss_mib()
    _reset_peak()
    token = secrets.token_bytes(32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sync" / "sync.sock"
        digests_file = Path(tmp) / "digests.json"
        digests_file.write_text(json.dumps(digests))
        server = asyncio.create_task(serve_state(path, snap, token, os.getuid(), digests=digests))
        while not path.exists():
            await asyncio.sleep(0.01)
        args = [sys.executable, "-m", "benchmarks.sync_throughput", "--client", str(path),
                "--token", token.hex(), "--digests", str(digests_file),
                *(["--verify"] if verify else [])]
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
        cpu = time.process_time()
        result = await server
        server_cpu = time.process_time() - cpu
        client = await finish_sync(result, proc, 30)
    cfg = Config()
    return {
        "entries": result.entries,
        "seconds": round(result.seconds, 3),
        "entries_per_second": round(result.entries / result.seconds),
        "client_seconds": round(client["client_seconds"], 3),
        "server_cpu_seconds": round(server_cpu, 3),
        "client_cpu_seconds": round(client["client_cpu_seconds"], 3),
        # what the bottleneck side sustains per CPU-second: the rate with a core per side
        "cpu_bound_entries_per_second": round(
            result.entries / max(server_cpu, client["client_cpu_seconds"])
        ),
        "load_average_1min": os.getloadavg()[0],
        "verify_digests": verify,
        "server_rss_before_sync_mib": round(rss_before, 1),
        "server_peak_rss_during_sync_mib": round(_rss_mib(), 1),
        "client_peak_rss_mib": round(client["client_peak_rss_mib"], 1),
        "in_flight_bound_mib": round(cfg.window * cfg.max_frame / 2**20, 1),
        "receive_buffer_bound_mib": round(cfg.max_buffer / 2**20, 2),
        "setup_seconds": round(setup, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--json", metavar="OUT", help="also write the figures to OUT as JSON")
    parser.add_argument("--verify", action="store_true",
                        help="client recomputes every digest (timed)")
    parser.add_argument("--client", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--digests", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main(args.client, bytes.fromhex(args.token), args.digests, args.verify))
        return
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    figures = asyncio.run(server_main(args.entries, args.verify))
    for key, value in figures.items():
        print(f"{key:28} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
