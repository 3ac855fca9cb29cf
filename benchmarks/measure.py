"""Benchmark helpers for scale: idle conntrack tables, and the memory ovsndu's processes use.

* :func:`fill_conntrack` — *n* idle entries of a realistic mix (TCP established, UDP seen
  both ways or once, ICMP echo, some source-NAT'ed UDP) over several zones, created the
  way traffic creates them (packet-outs through ``ct(commit)``, nothing output).
* :class:`RssSampler` — every 50 ms, the processes below a root PID (the supervisor: its
  client, its ``ovs-ofctl`` encoders; not the vswitchds it starts) and the ``ovsndu``
  command itself: per-process peak (``VmHWM``) and the peak of their summed RSS.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ovsndu.model import Conntrack
from ovsndu.ovs.packets import frame
from ovsndu.ovs.replay import conntrack_packets
from ovsndu.ovs.sandbox import Sandbox

CHUNK = 10_000
ZONES = 8
ZONE_BASE = 100  # away from the zones the measured pipelines use


def ct_entry_lines(i: int, zones: int = ZONES) -> list[str]:
    """Packet-out lines creating idle entry number *i* (10.64.0.0/10 → 10.128.0.0/16),
    in one of *zones* zones."""
    src = f"10.{64 + (i >> 16) % 64}.{(i >> 8) & 0xFF}.{i & 0xFF}"
    zone = ZONE_BASE + i % zones
    kind = i % 10
    if kind < 4:  # TCP established
        e = Conntrack(protocol="tcp", orig=f"src={src},dst=10.128.0.1,sport=40000,dport=443",
                      reply=f"src=10.128.0.1,dst={src},sport=443,dport=40000", zone=zone,
                      state_orig="ESTABLISHED", state_reply="ESTABLISHED")
        return [p.line() for p in conntrack_packets(e)]
    if kind < 8:  # UDP, replied for half of them
        fwd = frame(src_ip=src, dst_ip="10.128.0.2", proto="udp", sport=5353, dport=53)
        nat = ",nat(src=10.200.0.1)" if kind == 7 else ""
        lines = [f"packet-out in_port=controller packet={fwd.hex()} "
                 f"actions=ct(commit,zone={zone}{nat})"]
        if kind in (4, 5):
            back = frame(src_ip="10.128.0.2", dst_ip=src, proto="udp", sport=53, dport=5353)
            lines.append(f"packet-out in_port=controller packet={back.hex()} "
                         f"actions=ct(zone={zone})")
        return lines
    icmp = frame(src_ip=src, dst_ip="10.128.0.3", proto=1, icmp_type=8, icmp_code=0,
                 icmp_id=i & 0xFFFF)
    return [f"packet-out in_port=controller packet={icmp.hex()} actions=ct(commit,zone={zone})"]


def fill_conntrack(sb: Sandbox, n: int, bridge: str = "br0", zones: int = ZONES) -> float:
    """Create *n* idle conntrack entries over *zones* zones; returns the seconds it took."""
    started = time.monotonic()
    for start in range(0, n, CHUNK):
        lines = [ln for i in range(start, min(n, start + CHUNK))
                 for ln in ct_entry_lines(i, zones)]
        with tempfile.NamedTemporaryFile("w", suffix=".bundle", delete=False) as f:
            f.write("\n".join(lines) + "\n")
        try:
            sb.ofctl(bridge, "bundle", f.name)
        finally:
            Path(f.name).unlink()
    return time.monotonic() - started


def ct_total(sb: Sandbox) -> int:
    """Entries in the datapath's conntrack table (``dpctl/ct-stats-show``)."""
    m = re.search(r"Total:\s*(\d+)", sb.appctl("dpctl/ct-stats-show"))
    return int(m.group(1)) if m else 0


def _status(pid: int) -> dict[str, str]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    except OSError:
        return {}
    return out


def _kib(text: str | None) -> int:
    return int(text.split()[0]) if text else 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class RssSampler:
    """Peak memory of the ovsndu processes below *root* (and of *extra* PIDs) while running."""

    SKIP = ("ovs-vswitchd", "ovsdb-server")

    def __init__(self, root: int, interval: float = 0.05):
        self.root, self.interval = root, interval
        self.extra: set[int] = set()
        self.hwm: dict[int, tuple[str, int]] = {}  # pid -> (role, VmHWM KiB)
        self.peak_sum_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        """The processes below the root and the extra PIDs, without the children caught
        between fork and exec (a copy of their parent's command line: their memory is
        the parent's, vfork shares it, and was counted twice)."""
        return [pid for pid, parent in self._pairs()
                if parent is None or _cmdline(pid) != _cmdline(parent) or not _cmdline(pid)]

    def _pairs(self) -> list[tuple[int, int | None]]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = Path(f"/proc/{name}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(name))
        out: list[tuple[int, int | None]] = []
        todo: list[tuple[int, int | None]] = [(p, None) for p in (self.root, *self.extra)]
        while todo:
            pid, parent = todo.pop()
            out.append((pid, parent))
            todo += [(c, pid) for c in children.get(pid, [])]
        return out

    def _role(self, pid: int, name: str) -> str:
        if pid == self.root:
            return "supervisor"
        if name == "ovs-ofctl":
            return "ovs-ofctl"
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return name
        if b"ovsndu.upgrade.client" in cmd:
            return "client"
        if b"reload" in cmd:
            return "reload command"
        return name

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                st = _status(pid)
                name = st.get("Name", "")
                if not st or name in self.SKIP:
                    continue
                total += _kib(st.get("VmRSS"))
                role = self.hwm[pid][0] if pid in self.hwm else self._role(pid, name)
                self.hwm[pid] = (role, max(_kib(st.get("VmHWM")), self.hwm.get(pid, ("", 0))[1]))
            self.peak_sum_kib = max(self.peak_sum_kib, total)
            self._stop.wait(self.interval)

    def result(self) -> dict[str, Any]:
        """``{"total": MiB, role: MiB of its largest process, "<role> count": N}``."""
        out: dict[str, Any] = {"total": round(self.peak_sum_kib / 1024, 1)}
        for role, kib in self.hwm.values():
            out[role] = max(out.get(role, 0.0), round(kib / 1024, 1))
            out[f"{role} count"] = out.get(f"{role} count", 0) + 1
        return out
