"""Traffic endpoints for a netdev sandbox: a network namespace wired to the bridge by a veth.

Each endpoint is a namespace ``ovsndu-<pid>-ep<N>`` (so the sandbox's sweeper removes
it if its creator dies) holding one end of a veth pair, addressed and up, with TX
checksum offload off (the userspace datapath would otherwise deliver bad checksums).
The other end goes into the sandbox's namespace, ready for ``add-port``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from pyroute2 import NetNS, netns

from ovsndu.errors import SandboxError
from ovsndu.ovs.sandbox import NETNS_PREFIX, Sandbox

_counter = itertools.count()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A host in its own namespace: interface ``eth0`` with *ip*/24."""

    netns: str
    ip: str
    mac: str
    switch_port: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """*argv* run inside the endpoint."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: Sequence[str]) -> str:
        """Run a command inside the endpoint; SandboxError on failure."""
        proc = subprocess.run(self.argv(argv), capture_output=True, text=True, check=False,
                              timeout=60)
        if proc.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} in {self.netns}: {proc.stderr.strip()}")
        return proc.stdout

    def delete(self) -> None:
        """Remove the namespace (and with it the veth pair)."""
        if self.netns in netns.listnetns():
            netns.remove(self.netns)


def make_endpoint(switch_netns: str, switch_port: str, ip: str) -> Endpoint:
    """Create an endpoint whose veth peer *switch_port* sits in *switch_netns*."""
    name = f"{NETNS_PREFIX}{os.getpid()}-ep{next(_counter)}"
    netns.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("add", ifname="eth0", kind="veth",
                    peer={"ifname": switch_port, "net_ns_fd": switch_netns})
            idx = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=idx, address=ip, prefixlen=24)
            ns.link("set", index=idx, state="up")
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            mac = ns.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        with NetNS(switch_netns) as sw:
            sw.link("set", index=sw.link_lookup(ifname=switch_port)[0], state="up")
        ep = Endpoint(name, ip, mac, switch_port)
        ep.run(["ethtool", "-K", "eth0", "tx", "off"])
        subprocess.run(["ip", "netns", "exec", switch_netns, "ethtool", "-K", switch_port, "tx",
                        "off"], capture_output=True, check=True)
        return ep
    except BaseException:
        netns.remove(name)
        raise


def add_endpoint(sb: Sandbox, bridge: str, port: str, ip: str, ofport: int) -> Endpoint:
    """A host in its own namespace, wired by a veth to *port* (OpenFlow *ofport*) of *sb*."""
    if sb.netns is None:
        raise SandboxError("endpoints need a netdev sandbox (its own namespace)")
    ep = make_endpoint(sb.netns, port, ip)
    sb.on_stop(ep.delete)
    sb.vsctl("add-port", bridge, port, "--", "set", "interface", port, f"ofport_request={ofport}")
    return ep
