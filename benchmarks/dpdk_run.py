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
MILESTONES = (("eal_done", "DPDK Enabled - initialized"),
              ("tsc", "TSC frequency"),
              ("ports_attached", "attached to DPDK"),
              ("first_bridge", "using datapath ID"))


def standby_parts(log: str) -> dict[str, float]:
    """Where the process that took over last spent its time, in ms after it started DPDK's
    initialisation (its first act once it holds the OVSDB lock, in 3.1): EAL done, TSC
    known, last DPDK device attached, first bridge built.  The supervisor's
    ``bridges_ready`` mark minus ``first_bridge`` is what came before (the old process's
    death, the lock, reading the database)."""
    lines = [m for m in map(_LINE.match, log.splitlines()) if m]
    starts = [i for i, m in enumerate(lines) if "DPDK Enabled - initializing" in m.group(3)]
    if not starts:
        return {}
    first = lines[starts[-1]]

    def when(m: re.Match[str]) -> float:
        return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()

    t0 = when(first)
    out: dict[str, float] = {}
    for m in lines[starts[-1]:]:
        for name, text in MILESTONES:
            if text in m.group(3) and (name == "ports_attached" or name not in out):
                out[name] = round((when(m) - t0) * 1000, 1)
    return out
