"""A private OVN stack driving a sandbox's br-int: the controller-on-the-bridge case.

:class:`OvnStack` starts, in a directory of its own, two ovsdb-servers (OVN's
northbound and southbound databases, from the schemas Debian's ``ovn-central``
ships), ``ovn-northd`` and ``ovn-controller``.  The controller is pointed at the
sandbox's OVS database (``external_ids:ovn-remote``, ``ovn-encap-type=geneve``,
``ovn-encap-ip=127.0.0.1``, ``system-id``) and talks OpenFlow to br-int over the
bridge's management socket in the sandbox's run directory, as it does on a host.

The logical topology is small but has every stateful piece an upgrade must carry:
one logical switch ``ls0`` with ports ``a`` (10.0.0.1) and ``b`` (10.0.0.2) whose
veths come from endpoint namespaces (bound by ``external_ids:iface-id``), port
groups with allow-related ACLs (A may open connections to B; nothing may open one
to A; everything else towards B is dropped) and a load balancer VIP
(``10.0.0.100:80`` → B's port 5001).  :meth:`OvnStack.add_udp_lb` adds a second one
(``10.0.0.100:7400/udp`` → B's port 7400) for new NAT'd connections
(:func:`lb_connections` finds them in a conntrack dump); not by default: with two load
balancers, which group ID each gets depends on the order ovn-controller meets them, so
a freshly started one may number them the other way round.

Every daemon is started by this module and stopped by its PID; the endpoints'
namespaces go with the stack (and with the sandbox, if the stack is not stopped).
Only for tests and benchmarks (needs root, OVS and ``ovn-central ovn-host``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ovsndu.errors import SandboxError
from ovsndu.ovs.sandbox import Sandbox, _die_with_parent, wait_for
from ovsndu.testing.endpoints import Endpoint, make_endpoint

NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"
SB_SCHEMA = "/usr/share/ovn/ovn-sb.ovsschema"
OVN_TOOLS = ("ovn-northd", "ovn-controller", "ovn-nbctl", "ovn-sbctl", "ovn-appctl")
BRIDGE = "br-int"
CHASSIS = "ovsndu-hv1"
VIP, VIP_PORT, BACKEND_PORT = "10.0.0.100", 80, 5001
UDP_VIP_PORT = 7400  # lb1: VIP:7400/udp -> B:7400 (each new connection DNAT'd)
# Allow-related ACLs on port groups: A opens connections to B (and its replies come
# back as related/established traffic); no one opens a connection to A; everything
# else towards B is dropped.
ACLS = (
    ("pg_a", "from-lport", 1001, "inport == @pg_a && ip4", "allow-related"),
    ("pg_b", "to-lport", 1001, "outport == @pg_b && ip4 && ip4.src == $pg_a_ip4",
     "allow-related"),
    ("pg_a", "to-lport", 900, "outport == @pg_a && ip4", "drop"),
    ("pg_b", "to-lport", 900, "outport == @pg_b && ip4", "drop"),
)


def missing_ovn() -> str | None:
    """Why an OVN stack cannot run here (None when it can)."""
    for tool in OVN_TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool} (apt install ovn-central ovn-host; scripts/setup does)"
    for schema in (NB_SCHEMA, SB_SCHEMA):
        if not Path(schema).exists():
            return f"needs {schema} (apt install ovn-common)"
    return None


class OvnStack:
    """NB/SB ovsdb-servers, northd and ovn-controller for *sb*'s br-int (netdev sandbox).

    Use as a context manager or call :meth:`start` / :meth:`stop`.  ``a`` and ``b`` are
    the two endpoints once started.
    """

    def __init__(self, sb: Sandbox, workdir: str | Path):
        if sb.netns is None:
            raise SandboxError("an OVN stack needs a netdev sandbox (its own namespace)")
        self.sb = sb
        self.dir = Path(workdir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.endpoints: list[Endpoint] = []

    # --- paths and tools -------------------------------------------------------------------
    def sock(self, name: str) -> Path:
        """The Unix socket of daemon *name* (``nb``, ``sb``): its OVSDB remote."""
        return self.dir / f"{name}.sock"

    @property
    def nb(self) -> str:
        """The northbound database's remote."""
        return f"unix:{self.sock('nb')}"

    @property
    def southbound(self) -> str:
        """The southbound database's remote."""
        return f"unix:{self.sock('sb')}"

    def ctl(self, name: str) -> Path:
        """The unixctl socket of daemon *name* (``nb``, ``sb``, ``northd``, ``controller``).

        ovn-controller 23.03 has no ``--unixctl``: its socket is named after its PID in
        ``OVN_RUNDIR``."""
        if name == "controller":
            return self.dir / f"ovn-controller.{self.controller_pid}.ctl"
        return self.dir / f"{name}.ctl"

    def nbctl(self, *args: str, timeout: float = 30) -> str:
        """``ovn-nbctl`` on the private northbound database."""
        return self._run(["ovn-nbctl", f"--db={self.nb}", f"--timeout={timeout:g}", *args],
                         timeout=timeout + 10)

    def sbctl(self, *args: str) -> str:
        """``ovn-sbctl`` on the private southbound database."""
        return self._run(["ovn-sbctl", f"--db={self.southbound}", "--timeout=30", *args])

    def appctl(self, daemon: str, *args: str) -> str:
        """``ovn-appctl`` to one of the stack's daemons."""
        return self._run(["ovn-appctl", "-t", str(self.ctl(daemon)), "--timeout=30", *args])

    @property
    def controller_pid(self) -> int:
        """ovn-controller's PID."""
        return self.procs["controller"].pid

    # --- life cycle ------------------------------------------------------------------------
    def __enter__(self) -> OvnStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Databases, northd, br-int, ovn-controller, the topology; wait until it is in br-int."""
        reason = missing_ovn()
        if reason:
            raise SandboxError(reason)
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, schema in (("nb", NB_SCHEMA), ("sb", SB_SCHEMA)):
            self._start_ovsdb(name, schema)
        self.nbctl("init")
        self.procs["northd"] = self._spawn("northd", [
            "ovn-northd", f"--ovnnb-db={self.nb}", f"--ovnsb-db={self.southbound}"])
        wait_for(lambda: self._alive("northd") and self.ctl("northd").exists(), 10,
                 "ovn-northd's unixctl socket")
        self.sb.vsctl(
            "--may-exist", "add-br", BRIDGE, "--", "set", "bridge", BRIDGE,
            "datapath_type=netdev", "fail_mode=secure", "other_config:disable-in-band=true",
            "--", "set", "Open_vSwitch", ".", f"external_ids:system-id={CHASSIS}",
            f"external_ids:ovn-remote={self.southbound}", "external_ids:ovn-encap-type=geneve",
            "external_ids:ovn-encap-ip=127.0.0.1",
            "external_ids:ovn-bridge-datapath-type=netdev")
        self.start_controller()
        self._topology()
        self.wait_installed()

    def start_controller(self) -> None:
        """Start ovn-controller on the sandbox's OVS database and br-int."""
        self.procs["controller"] = self._spawn("controller", [
            "ovn-controller", self.sb.db], env={"OVS_RUNDIR": str(self.sb.rundir)})
        wait_for(lambda: self._alive("controller") and self.ctl("controller").exists(), 10,
                 "ovn-controller's unixctl socket")

    def restart_controller(self) -> None:
        """Stop ovn-controller (SIGTERM keeps its flows in br-int) and start a fresh one."""
        _stop(self.procs.pop("controller", None))
        self.start_controller()

    def stop(self) -> None:
        """Stop every daemon this stack started (by PID, newest first); delete the endpoints."""
        for name in reversed(list(self.procs)):
            _stop(self.procs.pop(name))
        while self.endpoints:
            self.endpoints.pop().delete()

    def _start_ovsdb(self, name: str, schema: str) -> None:
        db = self.dir / f"{name}.db"
        if not db.exists():
            self._run(["ovsdb-tool", "create", str(db), schema])
        self.procs[name] = self._spawn(name, [
            "ovsdb-server", str(db), f"--remote=punix:{self.sock(name)}"])
        wait_for(lambda: self._alive(name) and self.sock(name).exists(), 10,
                 f"the OVN {name.upper()} ovsdb-server's socket")

    def _spawn(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        full = [*argv, f"--pidfile={self.dir / name}.pid", f"--log-file={self.dir / name}.log",
                "-vconsole:off", "-vsyslog:off"]
        if name != "controller":
            full.append(f"--unixctl={self.ctl(name)}")
        environ = {**os.environ, "OVN_RUNDIR": str(self.dir), "OVN_LOGDIR": str(self.dir),
                   "OVS_RUNDIR": str(self.dir), **(env or {})}
        try:
            return subprocess.Popen(full, env=environ, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    preexec_fn=_die_with_parent)
        except OSError as exc:
            raise SandboxError(f"cannot start {argv[0]}: {exc.strerror}") from None

    def _alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            log = self.dir / f"{name}.log"
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            raise SandboxError(f"OVN {name} exited early" + (f": {tail[0]}" if tail else ""))
        return True

    def _run(self, argv: Sequence[str], *, timeout: float = 60) -> str:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                              timeout=timeout)
        if proc.returncode != 0:
            reason = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[:1]
            raise SandboxError(f"{' '.join(argv[:3])}...: {reason[0] if reason else 'failed'}")
        return proc.stdout

    # --- the logical topology --------------------------------------------------------------
    def _topology(self) -> None:
        assert self.sb.netns is not None
        self.nbctl("ls-add", "ls0")
        for ofport, (lsp, ip) in enumerate((("a", "10.0.0.1"), ("b", "10.0.0.2")), start=1):
            ep = make_endpoint(self.sb.netns, f"{lsp}-sw", ip)
            self.endpoints.append(ep)
            self.sb.on_stop(ep.delete)
            self.nbctl("lsp-add", "ls0", lsp, "--", "lsp-set-addresses", lsp, f"{ep.mac} {ip}")
            self.sb.vsctl("add-port", BRIDGE, ep.switch_port, "--", "set", "interface",
                          ep.switch_port, f"external_ids:iface-id={lsp}",
                          f"ofport_request={ofport}")
            setattr(self, lsp, ep)
        self.nbctl("pg-add", "pg_a", "a", "--", "pg-add", "pg_b", "b")
        for pg, direction, priority, match, verdict in ACLS:
            self.nbctl("acl-add", pg, direction, str(priority), match, verdict, "--type=port-group")
        self.nbctl("lb-add", "lb0", f"{VIP}:{VIP_PORT}", f"10.0.0.2:{BACKEND_PORT}", "tcp")
        self.nbctl("ls-lb-add", "ls0", "lb0")
        # No router answers ARP for the VIP on a bare logical switch: A resolves it to B's
        # MAC itself; ls0's load balancer rewrites the destination before the L2 lookup.
        self.a.run(["ip", "neigh", "replace", VIP, "lladdr", self.b.mac, "dev", "eth0"])
        for lsp in ("a", "b"):
            self.nbctl("wait-until", "Logical_Switch_Port", lsp, "up=true", timeout=60)

    a: Endpoint
    b: Endpoint

    # --- what the tests and benchmarks ask -------------------------------------------------
    def wait_installed(self, timeout: float = 60) -> None:
        """Until ovn-controller has put the current northbound config into br-int."""
        self.nbctl("--wait=hv", "sync", timeout=timeout)

    def add_udp_lb(self) -> None:
        """A second load balancer, ``VIP:UDP_VIP_PORT`` → B's UDP port; once in br-int."""
        self.nbctl("lb-add", "lb1", f"{VIP}:{UDP_VIP_PORT}", f"10.0.0.2:{UDP_VIP_PORT}", "udp")
        self.nbctl("ls-lb-add", "ls0", "lb1")
        self.wait_installed()

    def add_acl(self, pg: str, direction: str, priority: int, match: str, verdict: str) -> None:
        """Write an ACL to the northbound database (returns at once: no ``--wait``)."""
        self.nbctl("acl-add", pg, direction, str(priority), match, verdict, "--type=port-group")

    def pause_controller(self) -> None:
        """Freeze ovn-controller (``debug/pause``): it neither reconnects nor writes until
        :meth:`resume_controller` — what br-int holds meanwhile is what others put there."""
        self.appctl("controller", "debug/pause")

    def resume_controller(self) -> None:
        """Undo :meth:`pause_controller`."""
        self.appctl("controller", "debug/resume")

    def flows(self) -> list[str]:
        """br-int's raw table as OVS prints it: ``ovs-ofctl -O OpenFlow15 dump-flows br-int
        --no-stats``, lines sorted (the dump is in hash order)."""
        return _table(self.sb.ofctl(BRIDGE, "dump-flows", options=("--no-stats",)))

    def groups(self) -> list[str]:
        """br-int's groups as ``ovs-ofctl -O OpenFlow15 dump-groups`` prints them, sorted."""
        return _table(self.sb.ofctl(BRIDGE, "dump-groups"))

    def wanted(self, timeout: float = 60) -> tuple[list[str], list[str]]:
        """The flows and groups ovn-controller wants in br-int, as the tools print them.

        ``recompute`` alone is not enough: ovn-controller then sends only the difference
        between its new desired table and what it *believes* is installed, so a table
        changed behind its back stays changed.  A freshly started ovn-controller clears
        br-int and installs everything it computes in one bundle; once it reports the
        current config installed (``--wait=hv``), br-int is exactly what it wants.
        """
        self.restart_controller()
        deadline = time.monotonic() + timeout
        # --wait=hv returns at once when the chassis already reported the current nb_cfg:
        # bump it, so the answer comes from the new controller.
        self.wait_installed(timeout)
        while time.monotonic() < deadline:
            with contextlib.suppress(SandboxError):
                if "connected" in self.appctl("controller", "connection-status"):
                    break
            time.sleep(0.1)
        self.wait_installed(timeout)
        return self.flows(), self.groups()

    def __repr__(self) -> str:
        return f"OvnStack({self.dir}, pids={ {k: p.pid for k, p in self.procs.items()} })"


def lb_connections(dump: str, src: str = "10.0.0.1", backend: str = "10.0.0.2") -> set[int]:
    """Source ports of the UDP connections *src* → VIP:UDP_VIP_PORT that a raw
    ``dpctl/dump-conntrack`` holds in full: the load balancer's entry (DNAT'd to
    *backend*, in the source port's zone) and the destination port's (to *backend*)."""
    def ports(orig_dst: str, reply_src: str) -> set[int]:
        return {int(p) for p in re.findall(
            rf"udp,orig=\(src={re.escape(src)},dst={re.escape(orig_dst)},sport=(\d+),"
            rf"dport={UDP_VIP_PORT}\),reply=\(src={re.escape(reply_src)},", dump)}
    return ports(VIP, backend) & ports(backend, backend)


def _table(dump: str) -> list[str]:
    """A dump's entries, sorted; the reply header line (``OFPST_... reply``), if any, dropped."""
    return sorted(ln.strip() for ln in dump.splitlines()
                  if ln.strip() and not ln.startswith(("OFPST_", "NXST_", "OFPT_")))


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
