"""Helpers shared by the benchmarks: filling a sandbox with many flows and conntrack entries."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ovsndu.config import Config
from ovsndu.model import Conntrack
from ovsndu.ovs.packets import frame
from ovsndu.ovs.replay import conntrack_packets
from ovsndu.ovs.sandbox import Sandbox


def make_bridge(sb: Sandbox, bridge: str = "br0", ports: int = 4) -> None:
    """A netdev-typed bridge with dummy ports p1..pN."""
    args = ["add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev"]
    for i in range(1, ports + 1):
        args += ["--", "add-port", bridge, f"p{i}", "--", "set", "interface", f"p{i}",
                 "type=dummy", f"ofport_request={i}"]
    sb.vsctl(*args)


def flow_lines(n: int) -> list[str]:
    """*n* distinct realistic rules over 4 tables (ACL-like matches, varied actions)."""
    lines = []
    for i in range(n):
        table = i % 4
        a, b = (i >> 8) & 0xFF, i & 0xFF
        match = f"tcp,nw_src=10.{table}.{a}.{b},tp_dst={1 + i % 1000}"
        actions = (f"set_field:{i % 4096}->reg0,goto_table:{table + 1}" if table < 3
                   else f"ct(commit,zone={i % 10}),output:{1 + i % 4}")
        lines.append(f"table={table},priority={100 + i % 50},cookie={i:#x},{match},"
                     f"actions={actions}")
    return lines


def add_flows(sb: Sandbox, n: int, bridge: str = "br0") -> None:
    """Install *n* rules in one bundle."""
    with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as f:
        f.write("\n".join(flow_lines(n)) + "\n")
    try:
        sb.ofctl(bridge, "add-flows", f.name, options=("--bundle",))
    finally:
        Path(f.name).unlink()


def add_conntrack(sb: Sandbox, n: int, bridge: str = "br0", chunk: int = 10000,
                  tcp_share: float = 0.0) -> None:
    """*n* conntrack entries (zone i%8) created by packet-outs through ct(commit):
    UDP, and a *tcp_share* of ESTABLISHED TCP connections (full handshakes)."""
    n_tcp = int(n * tcp_share)
    for start in range(0, n, chunk):
        lines = []
        for i in range(start, min(n, start + chunk)):
            src = f"10.8.{(i >> 8) & 0xFF}.{i & 0xFF}"
            if i < n_tcp:
                entry = Conntrack(protocol="tcp", orig=f"src={src},dst=10.9.0.1,sport=40000,"
                                  "dport=443", reply=f"src=10.9.0.1,dst={src},sport=443,"
                                  "dport=40000", zone=i % 8, state_orig="ESTABLISHED",
                                  state_reply="ESTABLISHED")
                lines += [p.line() for p in conntrack_packets(entry)]
                continue
            pkt = frame(src_ip=src, dst_ip="10.9.0.1",
                        proto="udp", sport=1024 + (i >> 16), dport=53).hex()
            lines.append(f"packet-out in_port=controller packet={pkt} "
                         f"actions=ct(commit,zone={i % 8})")
        with tempfile.NamedTemporaryFile("w", suffix=".bundle", delete=False) as f:
            f.write("\n".join(lines) + "\n")
        try:
            sb.ofctl(bridge, "bundle", f.name)
        finally:
            Path(f.name).unlink()


def summary(values: list[float]) -> dict[str, float]:
    """min / median / max."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def write_json(path: str | None, report: dict[str, Any]) -> None:
    """Write the report when asked to."""
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def supervisor_status(cfg_path: Path) -> dict[str, Any]:
    """``ovsndu status --json`` of the supervisor of *cfg_path* ({} when it does not answer)."""
    r = subprocess.run([sys.executable, "-m", "ovsndu", "status", "--config", str(cfg_path),
                        "--json"], capture_output=True, text=True, check=False)
    try:
        return dict(json.loads(r.stdout))
    except ValueError:
        return {}


def wait_for(predicate: Any, timeout: float) -> None:
    """Poll *predicate* every 0.1 s; RuntimeError after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.1)


def start_supervisor(sb: Sandbox, work: Path, binary: str, vswitchd_args: list[str], *,
                     upgrade: dict[str, Any] | None = None, wait: float = 60
                     ) -> tuple[subprocess.Popen[bytes], Path]:
    """A real ``ovsndu supervise`` adopting *sb*'s vswitchd (config and log in *work*),
    once it reports idle; the process and its config file."""
    cfg = Config.from_dict({
        "ovs": {"rundir": str(sb.rundir), "db": sb.db, "vswitchd": binary,
                "vswitchd_args": vswitchd_args, "netns": sb.netns or ""},
        **({"upgrade": upgrade} if upgrade else {}),
        "ovsndu": {"state_dir": str(work / "state")},
    })
    cfg_path = work / "ovsndu.toml"
    cfg.write(cfg_path)
    with open(work / "supervisor.log", "wb") as log:
        sup = subprocess.Popen([sys.executable, "-m", "ovsndu", "supervise", "--config",
                                str(cfg_path)], stdout=log, stderr=log)
    try:
        wait_for(lambda: supervisor_status(cfg_path).get("phase") == "idle", wait)
    except RuntimeError:
        sup.kill()
        raise RuntimeError("the supervisor did not come up") from None
    return sup, cfg_path


async def finish_sync(result: Any, proc: Any, timeout: float) -> dict[str, Any]:
    """The server's side of a synced session to its end: hand over, wait for the client
    *proc* to be ready, commit, close; the client's report (its last line, JSON)."""
    await result.session.handover()
    await result.session.wait_ready(timeout=timeout)
    await result.session.commit()
    out, _ = await proc.communicate()
    await result.session.close()
    return dict(json.loads(out.decode().strip().splitlines()[-1]))
