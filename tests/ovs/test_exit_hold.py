"""The exit hold (ovsndu.ovs.exit_hold) on a real vswitchd with system ports (packet
sockets) and conntrack entries: its death no longer waits for the kernel to free them,
the references outlive it until released, and a process that goes on (a rollback)
keeps forwarding after the release."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.ovs.exit_hold import ExitHold, packet_socket_fds
from ovsndu.ovs.packets import frame
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.endpoints import Endpoint, add_endpoint
from tests.conftest import require_ovs


@pytest.fixture(name="switch")
def _switch(tmp_path: Path) -> Iterator[tuple[Sandbox, Endpoint, Endpoint]]:
    """A netdev bridge with two endpoints on veths (the datapath's packet sockets) and
    20k conntrack entries."""
    require_ovs()
    with Sandbox(tmp_path / "run", datapath="netdev") as sb:
        sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
        a = add_endpoint(sb, "br0", "a-sw", "10.0.0.1", 1)
        b = add_endpoint(sb, "br0", "b-sw", "10.0.0.2", 2)
        packets = (frame(src_ip=f"10.8.{i >> 8}.{i & 0xFF}", dst_ip="10.9.0.1", proto="udp",
                         sport=1024, dport=53).hex() for i in range(20000))
        lines = [f"packet-out in_port=controller packet={p} actions=ct(commit,zone={i % 4})"
                 for i, p in enumerate(packets)]
        (sb.rundir / "ct.bundle").write_text("\n".join(lines) + "\n")
        sb.ofctl("br0", "bundle", str(sb.rundir / "ct.bundle"))
        assert "Total: 20000" in sb.appctl("dpctl/ct-stats-show")
        yield sb, a, b


SERVE = ("import socket; s = socket.create_server(('', 7777)); c, _ = s.accept(); "
         "c.sendall(b'through')")
CONNECT = ("import socket, sys, time\n"
           "for _ in range(50):\n"
           "    try:\n"
           "        print(socket.create_connection((sys.argv[1], 7777), timeout=5).recv(7)"
           ".decode()); break\n"
           "    except ConnectionRefusedError: time.sleep(0.1)\n")


def _ping(a: Endpoint, b: Endpoint) -> None:
    """A TCP connection from *a* to *b* through the switch."""
    server = subprocess.Popen(b.argv([sys.executable, "-c", SERVE]))
    try:
        assert a.run([sys.executable, "-c", CONNECT, b.ip]).strip() == "through"
    finally:
        server.kill()
        server.wait()


def test_death_reaches_the_lock_and_taps_while_the_hold_keeps_the_rest(
        switch: tuple[Sandbox, Endpoint, Endpoint]) -> None:
    sb, a, b = switch
    _ping(a, b)
    pid = sb.vswitchd_pid
    packet_fds = packet_socket_fds(pid)
    assert len(packet_fds) >= 2, packet_fds  # one per system port at least
    hold = ExitHold.take(pid)
    try:
        assert hold.notes == []
        assert len(hold.sockets) == len(packet_fds)
        assert hold.memory_held
        for fd in hold.sockets:  # ours are packet sockets
            with socket.socket(fileno=os.dup(fd)) as s:
                assert s.family == socket.AF_PACKET
        pidfd = os.pidfd_open(pid)
        os.kill(pid, signal.SIGKILL)
        # It dies although its memory and packet sockets are still referenced by us.
        assert select.select([pidfd], [], [], 10)[0], "the held process did not die"
        os.close(pidfd)
        assert hold.memory_held
        assert sb.vswitchd_proc is not None
        assert sb.vswitchd_proc.wait(5) == -signal.SIGKILL
        for fd in hold.sockets:  # still open, still ours
            with socket.socket(fileno=os.dup(fd)) as s:
                assert s.family == socket.AF_PACKET
        # What a successor needs was released by the death itself: a new vswitchd gets
        # the OVSDB lock and opens the taps while the hold still stands, and forwards.
        sb.start_vswitchd()
        _ping(a, b)
        assert hold.memory_held
    finally:
        hold.release()
    assert not hold.memory_held
    assert hold.sockets == []


def test_release_leaves_a_process_that_goes_on_forwarding(
        switch: tuple[Sandbox, Endpoint, Endpoint]) -> None:
    """The rollback case: the hold is taken and released, the process never dies."""
    sb, a, b = switch
    pid = sb.vswitchd_pid
    before = packet_socket_fds(pid)
    hold = ExitHold.take(pid)
    assert hold.memory_held and len(hold.sockets) == len(before)
    os.kill(pid, signal.SIGSTOP)
    os.kill(pid, signal.SIGCONT)
    hold.release()
    assert not hold.memory_held
    assert sb.vswitchd_pid == pid
    assert packet_socket_fds(pid) == before  # closing ours closed none of its own
    _ping(a, b)
    hold.release()  # idempotent


def test_what_cannot_be_held_is_named_not_raised() -> None:
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    hold = ExitHold.take(gone, confirm_s=0.2)
    assert not hold.memory_held and hold.sockets == []
    assert [n.split(":")[0] for n in hold.notes] == ["packet sockets not held",
                                                     "address space not held"]
    hold.release()


def test_hugepage_memory_is_not_held() -> None:
    """A DPDK process's hugepages go back at its death (its successor may need them)."""
    from ovsndu.ovs.exit_hold import hugetlb_kib

    plain = ("55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  97684 kB\n"
             "Shared_Hugetlb:        0 kB\nPrivate_Hugetlb:        0 kB\nSwap: 0 kB\n")
    assert hugetlb_kib(plain) == 0
    assert hugetlb_kib(plain.replace("Private_Hugetlb:        0",
                                     "Private_Hugetlb:   262144")) == 262144
    # and this process maps none: its own rollup says so
    assert hugetlb_kib(Path("/proc/self/smaps_rollup").read_text()) == 0
