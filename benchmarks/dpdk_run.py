"""The disruption benchmark on Debian's DPDK build (``--datapath dpdk``).

The sandbox runs ``ovs-vswitchd-dpdk`` with DPDK initialised (hugepages from
:func:`ovsndu.testing.dpdk.hugepages`, no PCI bus, one PMD thread on core 1) and the
endpoints' veths attached as DPDK virtual devices (``net_af_packet``, polled by the PMD
thread).  Upstream's method is the same ``ovs-ctl restart`` with ``OVS_SBINDIR`` pointing
at a directory whose ``ovs-vswitchd`` is the DPDK build — what the ``ovs-vswitchd``
alternative pointing at it gives.  :func:`standby_parts` reads where the standby's time
went from its log (EAL initialisation, TSC, bridges), relative to the old process's death.
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
              ("ports_attached", "attached to DPDK"),
              ("first_bridge", "using datapath ID"))


def old_gone_wall(record: dict[str, Any]) -> float | None:
    """When the old process was seen gone (epoch seconds), from the upgrade record: the
    handover phase's start plus its ``old_stopped`` and ``old_gone`` marks."""
    marks = record.get("marks", {})
    start = next((p["started"] for p in record.get("phases", [])
                  if p["phase"] == "handover"), None)
    if start is None or "old_stopped" not in marks or "old_gone" not in marks:
        return None
    return (datetime.fromisoformat(start).timestamp()
            + (marks["old_stopped"] + marks["old_gone"]) / 1000)


def standby_parts(log: str, gone: float) -> dict[str, float]:
    """Where the process that took over last spent its time, in ms relative to the old
    process's death (*gone*, epoch seconds; :func:`old_gone_wall`): its DPDK (EAL)
    initialisation's start and end (negative when it initialised DPDK before the
    handover, ovs/preinit.py), TSC known to its datapath, last DPDK device attached,
    first bridge built.  EAL lines are the last ones logged; the others the first (last
    for devices) after the death.  Lines of the old process before its death do not
    count."""
    lines = [m for m in map(_LINE.match, log.splitlines()) if m]

    def when(m: re.Match[str]) -> float:
        return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()

    out: dict[str, float] = {}
    for m in lines:
        t = when(m)
        for name, text in MILESTONES:
            if text not in m.group(3):
                continue
            after = t >= gone - 0.002 and (name == "ports_attached" or name not in out)
            if name.startswith("eal_") or after:
                out[name] = round((t - gone) * 1000, 1)
    return out
