"""The DPDK build (openvswitch-switch-dpdk) as a source and a target of live upgrades.

Hugepages are set up by each test (``vm.nr_hugepages`` raised, a private hugetlbfs mount)
and given back afterwards (ovsndu.testing.dpdk: relative and locked, so concurrent runs
compose).  Judged by OVS's own tools: the raw output of ovs-vsctl/ovs-ofctl/ovs-appctl
before and after, ``/proc/PID/exe`` of the serving process, and ``Open_vSwitch:dpdk_initialized``.
A DPDK build's standby initialises DPDK before the handover on a private database
(ovs/preinit.py): what that leaves (a symlink remote, no server, no file) is checked.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.config import Config
from ovsndu.ovs import preinit
from ovsndu.ovs.sandbox import NETDEV_ARGS, Sandbox
from ovsndu.testing import dpdk
from tests.conftest import require_ovs
from tests.upgrade.conftest import VSWITCHD, Rig, fake_binary, make_rig
from tests.upgrade.test_reload import _tools_output

PAGES = 4 * dpdk.SOCKET_MEM_MB // 2  # old, rehearsal and standby at once, and a spare


def require_dpdk() -> None:
    """Fail in CI, skip elsewhere, when the DPDK build cannot run here."""
    require_ovs()
    why = dpdk.available()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and this test {why}")
    pytest.skip(f"{why}; CI is unset, so skipping (in CI this fails)")


@pytest.fixture(name="huge")
def _huge() -> Iterator[Path]:
    require_dpdk()
    with dpdk.hugepages(PAGES) as mount:
        assert mount.is_mount()
        yield mount
    # Pages given back (relative: another run may hold some meanwhile), mount gone.
    assert not mount.exists()


def _serving(rig: Rig) -> tuple[int, Path]:
    pid = rig.status()["vswitchd"]["pid"]
    return pid, Path(f"/proc/{pid}/exe").resolve()


def _dpdk_initialized(rig: Rig) -> str:
    return rig.sb.vsctl("get", "Open_vSwitch", ".", "dpdk_initialized").strip()


def _remote(pid: int) -> str:
    """The database remote of vswitchd *pid* (the first, when it names several)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1].decode().split(",")[0]


def _nothing_left(rig: Rig, huge: Path) -> None:
    """No private ovsdb-server, no work files, no DPDK files; the only database link is
    the serving process's own (if it has one) and it leads to the live database."""
    state = Path(rig.cfg.ovsndu.state_dir)
    assert preinit.orphans(state) == []
    assert not list(state.glob(f"work/*/{preinit.SUBDIR}")), "private database files"
    assert list(huge.iterdir()) == [], "hugepage files (OVS runs DPDK --in-memory)"
    pid = rig.status()["vswitchd"]["pid"]
    links = sorted(p.name for p in rig.sb.rundir.glob(".of-*.db.sock*"))
    remote = _remote(pid)
    if remote == rig.sb.db:
        assert links == []
    else:
        assert links == [Path(remote).name], (links, remote)
        assert Path(remote.removeprefix("unix:")).resolve() == rig.sb.db_sock.resolve()


def _preinitialised(result: dict[str, object], log: Path, pid: int) -> None:
    """The new process *pid* had DPDK initialised before it waited on the live lock."""
    marks = result["record"]["marks"]  # type: ignore[index]
    assert marks["preinit.initialised"] > 0, marks
    assert marks["preinit.reconnected"] > 0, marks
    text = log.read_text(errors="replace")
    waited = text.rindex(preinit.CONTENDED.format(pid=pid))
    assert text.rindex("DPDK Enabled - initialized") < waited


def test_plain_to_dpdk_and_back(huge: Path, tmp_path: Path) -> None:
    """Switching the binary between the plain and the DPDK build is a live upgrade both
    ways: state equal in the tools' raw output, the new build serving, DPDK initialised
    exactly when the DPDK build serves."""
    with make_rig(tmp_path) as rig:
        rig.sb.vsctl("set", "Open_vSwitch", ".", *dpdk.dpdk_settings(huge))
        before = _tools_output(rig)
        code, result = rig.reload("--vswitchd", str(dpdk.DPDK_VSWITCHD))
        assert code == 0, result
        pid, exe = _serving(rig)
        assert exe == dpdk.DPDK_VSWITCHD.resolve()
        assert _dpdk_initialized(rig) == "true"
        assert _tools_output(rig) == before
        _preinitialised(result, rig.sb.rundir / "ovs-vswitchd.log", pid)
        assert _remote(pid) != rig.sb.db  # the symlink, now leading to the live database
        _nothing_left(rig, huge)
        marks = result["record"]["marks"]
        print(f"\nplain -> DPDK: gap {result['record']['handover_gap_ms']} ms, marks {marks}")

        code, result = rig.reload("--vswitchd", VSWITCHD)
        assert code == 0, result
        pid, exe = _serving(rig)
        assert exe == Path(VSWITCHD).resolve()
        assert _dpdk_initialized(rig) == "false"
        assert _tools_output(rig) == before
        assert "preinit.tsc" in result["record"]["marks"]  # the plain build's TSC, early
        # The DPDK process's hugepages went back at its death, not after the lift
        # (ovs/exit_hold.py); the plain one's memory is held across its kill.
        assert result["record"]["marks"]["exit_hold.memory"] == 0.0
        assert _remote(pid) != rig.sb.db
        _nothing_left(rig, huge)  # the DPDK process's link went with it
        print(f"DPDK -> plain: gap {result['record']['handover_gap_ms']} ms")


def test_dpdk_to_dpdk_and_rollback_of_the_preinitialised_standby(huge: Path, tmp_path: Path
                                                                 ) -> None:
    """DPDK build -> DPDK build twice with DPDK initialised before the handover: commits,
    raw state equal, DPDK initialised, nothing left (the first new process's database link
    goes with it; the last one follows ovsdb-server's restart through it).  Then a
    standby that fails after it was moved from its private database to the live one:
    rolled back, the DPDK process that served still serves with the same state, and
    nothing is left behind."""
    with make_rig(tmp_path) as rig:
        rig.sb.vsctl("set", "Open_vSwitch", ".", *dpdk.dpdk_settings(huge))
        code, result = rig.reload("--vswitchd", str(dpdk.DPDK_VSWITCHD))
        assert code == 0, result
        before = _tools_output(rig)
        for _ in range(2):
            old = _serving(rig)[0]
            code, result = rig.reload("--vswitchd", str(dpdk.DPDK_VSWITCHD))
            assert code == 0, result
            pid, exe = _serving(rig)
            assert pid != old and exe == dpdk.DPDK_VSWITCHD.resolve()
            assert _dpdk_initialized(rig) == "true"
            assert _tools_output(rig) == before
            _preinitialised(result, rig.sb.rundir / "ovs-vswitchd.log", pid)
            _nothing_left(rig, huge)
            print(f"\nDPDK -> DPDK: gap {result['record']['handover_gap_ms']} ms, marks "
                  f"{result['record']['marks']}")

        # The serving process reaches the database through its link: after ovsdb-server
        # restarts, it reconnects and applies a change (ovs-vsctl waits for it to).
        assert rig.sb.ovsdb_proc is not None
        rig.sb.ovsdb_proc.terminate()
        rig.sb.ovsdb_proc.wait(timeout=10)
        rig.sb.start_ovsdb()
        rig.sb.vsctl("set", "Open_vSwitch", ".", "external_ids:ovsndu-test=1")
        rig.sb.vsctl("remove", "Open_vSwitch", ".", "external_ids", "ovsndu-test")
        assert _tools_output(rig) == before

        # A standby whose bridge module does not log to the file: moved to the live
        # database, it never says it waits on the lock, and the supervisor gives up
        # after 20 s, with the standby connected to the live database and DPDK up.
        bad = fake_binary(tmp_path, "silent-standby", (
            f'REAL={dpdk.DPDK_VSWITCHD}\n'
            'if [[ "$*" == *standby.pid* ]]; then\n'
            '  exec -a "$0" "$REAL" "$@" -vbridge:file:off\n'
            'fi\nexec -a "$0" "$REAL" "$@"'))
        serving = _serving(rig)[0]
        code, result = rig.reload("--vswitchd", str(bad))
        assert code == 1, result
        assert result["outcome"] == "rolled_back", result
        assert "reconnect to the database" in result["reason"], result
        assert result["record"]["marks"]["preinit.initialised"] > 0
        assert rig.vswitchd_pids() == [serving]
        assert _serving(rig) == (serving, dpdk.DPDK_VSWITCHD.resolve())
        assert _dpdk_initialized(rig) == "true"
        assert _tools_output(rig) == before
        _nothing_left(rig, huge)
        assert not list(rig.sb.rundir.glob(".of-*.d")), "the standby's private rundir"


def _vhost_listens(path: Path) -> None:
    """A process listens on the vhost-user socket *path* (a VM's QEMU could connect)."""
    assert stat.S_ISSOCK(path.stat().st_mode), path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))


def test_dpdk_ports_are_carried(huge: Path, tmp_path: Path) -> None:
    """A bridge whose ports are DPDK devices (net_tap, net_af_packet virtual devices)
    and a vhost-user port passes preflight and is carried DPDK build -> DPDK build: same
    ports, same flows, still DPDK ports, the new process listening on the vhost-user
    socket where a VM looks for it; the rehearsal opened none of them."""
    with Sandbox(tmp_path / "run", datapath="netdev", vswitchd=str(dpdk.DPDK_VSWITCHD),
                 vswitchd_args=NETDEV_ARGS) as sb:
        sb.vsctl("set", "Open_vSwitch", ".", *dpdk.dpdk_settings(huge))
        sb.restart_vswitchd()
        sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
                 "fail_mode=secure", "--", "add-port", "br0", "dp0", "--", "set", "interface",
                 "dp0", "type=dpdk", "options:dpdk-devargs=net_tap0,iface=ovsndutap0",
                 # net_tap wants as many rx as tx queues; OVS uses 2 tx (PMD + main thread).
                 "options:n_rxq=2", "ofport_request=1")
        # A net_af_packet device on a veth that exists only in the sandbox's namespace:
        # the rehearsal (host namespace) must not try to open it (ovs/dpdk.py).
        sb.run(sb.ns_argv(["ip", "link", "add", "ovsndu-v1", "type", "veth", "peer", "name",
                           "ovsndu-v2"]))
        for dev in ("ovsndu-v1", "ovsndu-v2"):
            sb.run(sb.ns_argv(["ip", "link", "set", dev, "up"]))
        sb.vsctl("add-port", "br0", "dp1", "--", "set", "interface", "dp1", "type=dpdk",
                 "options:dpdk-devargs=net_af_packet1,iface=ovsndu-v1,qpairs=2",
                 "options:n_rxq=2", "ofport_request=2")
        # A vhost-user port: OVS listens on <rundir>/vhu0 for a VM's QEMU to connect.
        sb.vsctl("add-port", "br0", "vhu0", "--", "set", "interface", "vhu0",
                 "type=dpdkvhostuser", "ofport_request=3")
        sb.ofctl("br0", "add-flow", "in_port=1,ip,actions=ct(commit,zone=2),output:2")
        for port, number in (("dp0", "1"), ("dp1", "2"), ("vhu0", "3")):
            assert sb.vsctl("get", "Interface", port, "ofport").strip() == number
        _vhost_listens(sb.rundir / "vhu0")
        cfg = Config.from_dict({
            "ovs": {"rundir": str(sb.rundir), "db": sb.db, "vswitchd": str(dpdk.DPDK_VSWITCHD),
                    "vswitchd_args": list(NETDEV_ARGS), "netns": sb.netns or ""},
            "upgrade": {"timeout": 120},
            "ovsndu": {"state_dir": str(tmp_path / "state")},
        })
        cfg_path = tmp_path / "ovsndu.toml"
        cfg_path.write_text(cfg.to_toml())
        rig = Rig(sb, cfg, cfg_path, None, tmp_path / "supervisor.log", {})  # type: ignore[arg-type]
        rig.start_supervisor()
        try:
            flows = sb.ofctl("br0", "dump-flows", options=("--no-stats",))
            old = _serving(rig)[0]
            code, result = rig.reload()
            assert code == 0, result
            new = _serving(rig)[0]
            assert new != old
            for port, number in (("dp0", "1"), ("dp1", "2")):
                assert sb.vsctl("get", "Interface", port, "type").strip() == "dpdk"
                assert sb.vsctl("get", "Interface", port, "ofport").strip() == number
                assert sb.vsctl("get", "Interface", port, "error").strip() == "[]"
            # The new process listens where the VM looks for it, not in a private dir.
            assert sb.vsctl("get", "Interface", "vhu0", "error").strip() == "[]"
            _vhost_listens(sb.rundir / "vhu0")
            assert sb.ofctl("br0", "dump-flows", options=("--no-stats",)) == flows
            _preinitialised(result, sb.rundir / "ovs-vswitchd.log", new)
            _nothing_left(rig, huge)
            # OVS names the socket through the link, which now points at the rundir: a
            # deleted port unlinks it there, and the port comes back where it was.
            sb.vsctl("del-port", "br0", "vhu0")
            assert not (sb.rundir / "vhu0").exists()
            sb.vsctl("add-port", "br0", "vhu0", "--", "set", "interface", "vhu0",
                     "type=dpdkvhostuser", "ofport_request=3")
            _vhost_listens(sb.rundir / "vhu0")
            # Kept off the old PMD core while DPDK initialised, then given every CPU back
            # (its own PMD thread aside, which OVS pins).
            # DPDK control threads made later (vhost-events, for the vhost-user port)
            # take EAL's control-thread CPU set computed at its initialisation: the
            # restricted one (upstream's is the non-lcore CPUs, here the PMD core).
            for task in Path(f"/proc/{new}/task").iterdir():
                if not (task / "comm").read_text().startswith(("pmd", "vhost-events")):
                    assert os.sched_getaffinity(int(task.name)) == os.sched_getaffinity(0)
            print(f"\nDPDK -> DPDK with a DPDK port: gap {result['record']['handover_gap_ms']} "
                  f"ms, marks {result['record']['marks']}")
        finally:
            rig.stop_supervisor()
            for pid in rig.vswitchd_pids():
                os.kill(pid, signal.SIGKILL)
