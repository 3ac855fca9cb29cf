"""The disruption benchmark on Debian's DPDK build (``--datapath dpdk``).

The sandbox runs ``ovs-vswitchd-dpdk`` with DPDK initialised (hugepages from
:func:`ovsndu.testing.dpdk.hugepages`, no PCI bus, one PMD thread on core 1) and the
endpoints' veths attached as DPDK virtual devices (``net_af_packet``, polled by the PMD
thread).  Upstream's method is the same ``ovs-ctl restart`` with ``OVS_SBINDIR`` pointing
at a directory whose ``ovs-vswitchd`` is the DPDK build — what the ``ovs-vswitchd``
alternative pointing at it gives.  :func:`standby_parts` reads where the standby's time
went from its log (EAL initialisation, TSC, bridges), relative to the old process's kill.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing import dpdk

PMD_MASK = "0x2"
#: Hugepages for the benchmark: old, rehearsal and standby processes at once, and a spare.
PAGES = 4 * dpdk.SOCKET_MEM_MB // 2


def start(sb: Sandbox, huge: Path) -> None:
    """Enable DPDK in the sandbox's database and restart its vswitchd (the DPDK build)."""
    sb.vsctl("set", "Open_vSwitch", ".", *dpdk.dpdk_settings(huge),
             f"other_config:pmd-cpu-mask={PMD_MASK}")
    sb.restart_vswitchd()


def as_dpdk_ports(sb: Sandbox, ports: list[str]) -> None:
    """Re-attach each veth *port* of the sandbox as a ``net_af_packet`` DPDK device."""
    for i, port in enumerate(ports):
        sb.vsctl("set", "interface", port, "type=dpdk",
                 f"options:dpdk-devargs=net_af_packet{i},iface={port},qpairs=2",
                 "options:n_rxq=2")
        err = sb.vsctl("get", "interface", port, "error").strip()
        if err not in ("[]", '""'):
            raise RuntimeError(f"{port} as a DPDK device: {err}")


def sbindir(work: Path) -> Path:
    """A directory whose ``ovs-vswitchd`` is the DPDK build (for ``ovs-ctl``)."""
    d = work / "sbin-dpdk"
    d.mkdir(exist_ok=True)
    link = d / "ovs-vswitchd"
    if not link.exists():
        link.symlink_to(dpdk.DPDK_VSWITCHD)
    return d


_LINE = re.compile(r"^(\S+Z)\|\d+\|([^|]+)\|[A-Z]+\|(.*)$")
MILESTONES = (("eal_start", "DPDK Enabled - initializing"),
              ("eal_done", "DPDK Enabled - initialized"),
              ("tsc", "TSC frequency"),
              ("first_bridge", "using datapath ID"))


def standby_parts(log: str, kill_wall: float) -> dict[str, float]:
    """Milliseconds after *kill_wall* (the old process's kill, wall clock) at which the
    process that started last reached each milestone of :data:`MILESTONES`."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        when = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        if when < kill_wall - 0.001:
            continue
        for name, text in MILESTONES:
            if text in m.group(3) and name not in out:
                out[name] = round((when - kill_wall) * 1000, 1)
    return out


def kill_wall_time(record: dict[str, Any]) -> float | None:
    """Wall time of the old process's kill: the handover phase's start plus the catch-up
    read that precedes it (both in the upgrade record)."""
    for p in record.get("phases", []):
        if p.get("phase") == "handover":
            start = datetime.fromisoformat(p["started"]).timestamp()
            return start + record.get("marks", {}).get("catchup_read_ms", 0.0) / 1000
    return None
