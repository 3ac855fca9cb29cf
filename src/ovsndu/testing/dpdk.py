"""The DPDK build of Open vSwitch for tests and benchmarks: hugepages, and its configuration.

``openvswitch-switch-dpdk`` installs ``ovs-vswitchd-dpdk`` beside the plain build (as a
lower-priority alternative: /usr/sbin/ovs-vswitchd stays the plain build).  DPDK needs
hugepages: :func:`hugepages` raises ``vm.nr_hugepages`` by what a test needs and mounts a
private hugetlbfs, and takes both back afterwards (relative to what it added, under a
lock, so concurrent runs compose).  :func:`enable_dpdk` writes the
``other_config`` keys that make the DPDK build initialise DPDK (EAL) without a PCI bus;
the plain build ignores them (it logs that it has no DPDK support).  OVS always passes
``--in-memory``, so an old and a new DPDK process never share hugepage files.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

DPDK_VSWITCHD = Path("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk")
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
#: MiB of hugepage memory each DPDK vswitchd takes (dpdk-socket-mem).
SOCKET_MEM_MB = 128


LOCK = Path("/run/lock/ovsndu-hugepages.lock")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _add_pages(delta: int) -> int:
    """Change ``vm.nr_hugepages`` by *delta* (under the lock: concurrent test runs, each
    adding and later removing its own pages, compose); returns the new value."""
    with _locked():
        now = int(NR_HUGEPAGES.read_text())
        NR_HUGEPAGES.write_text(f"{max(0, now + delta)}\n")
        return int(NR_HUGEPAGES.read_text())


@contextlib.contextmanager
def hugepages(pages: int) -> Iterator[Path]:
    """*pages* more 2 MiB hugepages and a private hugetlbfs mount (its path); on exit the
    mount goes and the same number of pages is given back (relative, so that another run
    doing the same meanwhile is not undone)."""
    mount = Path(tempfile.mkdtemp(prefix="ovsndu-huge-"))
    with _locked():
        before = int(NR_HUGEPAGES.read_text())
    got = _add_pages(pages)
    try:
        if got < before + pages:
            raise RuntimeError(f"asked for {before + pages} hugepages, the kernel gave {got}")
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mount)],
                       check=True, capture_output=True)
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=False, capture_output=True)
    finally:
        _add_pages(-pages)
        with contextlib.suppress(OSError):
            mount.rmdir()


def dpdk_settings(huge_dir: Path, socket_mem: int = SOCKET_MEM_MB) -> list[str]:
    """``ovs-vsctl set Open_vSwitch .`` arguments that enable DPDK in the DPDK build."""
    # per-port-memory: a DPDK port's mempool sized for its queues (~16k mbufs), not the
    # shared 256k-mbuf default that needs more than the socket memory given here.
    return ["other_config:dpdk-init=true", f"other_config:dpdk-socket-mem={socket_mem}",
            "other_config:per-port-memory=true",
            f"other_config:dpdk-extra=--no-pci --huge-dir={huge_dir}"]


def available() -> str | None:
    """None when the DPDK build can run here, else why not."""
    if not DPDK_VSWITCHD.is_file():
        return f"needs {DPDK_VSWITCHD} (apt install openvswitch-switch-dpdk; scripts/setup)"
    if not NR_HUGEPAGES.exists():
        return "needs hugepage support in the kernel (/proc/sys/vm/nr_hugepages)"
    return None
