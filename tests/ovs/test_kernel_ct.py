"""Kernel conntrack read through pyroute2, in a private network namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from ovsndu.ovs.sandbox import NETNS_PREFIX
from tests.conftest import require_ovs

SCRIPT = textwrap.dedent("""
    import json, socket
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple
    from ovsndu.model import Conntrack as Entry
    from ovsndu.ovs.kernel_ct import kernel_conntrack_keys, missing_from_kernel
    ct = Conntrack()
    udp = NFCTAttrTuple(family=socket.AF_INET, saddr="10.0.0.1", daddr="10.0.0.2",
                        proto=socket.IPPROTO_UDP, sport=1234, dport=53)
    ct.entry("add", timeout=60, tuple_orig=udp, tuple_reply=udp.reverse(), zone=5)
    icmp = NFCTAttrTuple(family=socket.AF_INET, saddr="10.0.0.3", daddr="10.0.0.1",
                         proto=socket.IPPROTO_ICMP, icmp_id=9, icmp_type=8, icmp_code=0)
    ct.entry("add", timeout=60, tuple_orig=icmp, tuple_reply=icmp.reverse())
    kept = Entry(protocol="udp", orig="src=10.0.0.1,dst=10.0.0.2,sport=1234,dport=53",
                 reply="", zone=5)
    gone = Entry(protocol="udp", orig="src=10.0.0.1,dst=10.0.0.2,sport=1235,dport=53",
                 reply="", zone=5)
    print(json.dumps({"keys": sorted(kernel_conntrack_keys()),
                      "missing": [e.orig for e in missing_from_kernel([kept, gone])]}))
""")


@pytest.fixture(name="netns")
def _netns() -> Iterator[str]:
    require_ovs()
    name = f"{NETNS_PREFIX}{__import__('os').getpid()}-kct"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_reads_zone_protocol_and_tuple_as_the_model_keys_them(netns: str) -> None:
    """Entries created in the kernel come back keyed like dpctl/dump-conntrack prints them;
    an entry the kernel lacks is reported missing."""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT],
                         capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["keys"] == [
        [0, "icmp", "src=10.0.0.3,dst=10.0.0.1,id=9,type=8,code=0"],
        [5, "udp", "src=10.0.0.1,dst=10.0.0.2,sport=1234,dport=53"],
    ]
    assert result["missing"] == ["src=10.0.0.1,dst=10.0.0.2,sport=1235,dport=53"]
