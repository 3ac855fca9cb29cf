"""`apt upgrade` of Open vSwitch as a live upgrade: a policy-rc.d hook for the package scripts.

Debian's maintainer scripts of openvswitch-switch stop ``ovsdb-server.service`` and
``ovs-vswitchd.service`` in the preinst of an upgrade (``--reinstall`` too) and restart
``openvswitch-switch.service`` in the postinst, through ``deb-systemd-invoke``, which asks
``/usr/sbin/policy-rc.d UNIT ACTION`` first (101 = do not run it).  ``ovsndu
install-systemd`` puts a small shell ``policy-rc.d`` there that, for those units only,
asks ``ovsndu package-hook``:

* preinst ``stop`` of ovsdb-server / ovs-vswitchd / ovs-record-hostname → denied: both
  daemons keep serving while dpkg unpacks (the running processes keep their old
  binaries; stopping ovs-record-hostname would stop ovsdb-server through
  openvswitch-switch).
* postinst ``restart``/``start`` of openvswitch-switch (or ovs-vswitchd) → the live
  upgrade: ``ovsndu reload`` to the newly installed ovs-vswitchd, which first converts
  the database online to the newly installed schema (backup, ``_Server`` refreshed);
  only once it committed is ovsdb-server restarted alone onto its new binary (vswitchd
  stays up and reconnects, see :mod:`ovsndu.systemd.units`); the restart itself is
  denied.  A failed upgrade rolls back (the old vswitchd keeps serving, the database
  keeps its schema, ovsdb-server is not restarted), is printed on apt's output, logged
  to the journal and shown by ``ovsndu status``; the package still installs.

Anything else (other units, actions outside these package scripts, no supervisor
running, ovsndu missing) gets the answer of the policy-rc.d that was there before
(kept as ``policy-rc.d.ovsndu-chained`` and asked first), else "allowed": a host where
ovsndu is broken behaves as without it, and packages always install.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from ovsndu.errors import OvsnduError

POLICY = Path("usr/sbin/policy-rc.d")
CHAINED = Path("usr/sbin/policy-rc.d.ovsndu-chained")
MARK = "# ovsndu: written by `ovsndu install-systemd`"
# ovs-record-hostname is RequiredBy openvswitch-switch, which ovsdb-server is PartOf: the
# preinst's stop of it alone stops ovsdb-server.
UNITS = ("ovsdb-server.service", "ovs-vswitchd.service", "openvswitch-switch.service",
         "ovs-record-hostname.service")
UPGRADE_UNITS = ("ovs-vswitchd.service", "openvswitch-switch.service")
PACKAGES = ("openvswitch-switch", "openvswitch-common")
ALLOW, DENY = 0, 101
Decision = Literal["allow", "deny", "upgrade"]
log = structlog.get_logger("ovsndu.package")

POLICY_SCRIPT = """#!/bin/sh
{mark}; removed by `ovsndu uninstall-systemd`.
# Asked by deb-systemd-invoke/invoke-rc.d before a package script starts or stops a
# service.  For Open vSwitch's units during its own package upgrade, ovsndu keeps OVS
# running and turns the restart into a live upgrade (docs/upgrade.md); everything else
# gets the answer of the policy-rc.d that was here before (if any), else "allowed".
chained=/usr/sbin/policy-rc.d.ovsndu-chained
rc=0
if [ -x "$chained" ]; then
    "$chained" "$@"
    rc=$?
    case $rc in 0|104) ;; *) exit $rc ;; esac
fi
unit=""; action=""
for arg in "$@"; do
    case $arg in
        -*) ;;
        *) if [ -z "$unit" ]; then unit=$arg; elif [ -z "$action" ]; then action=$arg; fi ;;
    esac
done
case $unit in
    {units}) ;;
    *) exit $rc ;;
esac
{command} package-hook "$unit" "$action" </dev/null
[ $? -eq 101 ] && exit 101
exit $rc
"""


def render_policy(command: str) -> str:
    """The policy-rc.d script that runs *command* (the ovsndu command line)."""
    return POLICY_SCRIPT.format(mark=MARK, units="|".join(UNITS), command=command)


def is_ours(path: Path) -> bool:
    """Whether *path* is the policy-rc.d ovsndu wrote."""
    try:
        return MARK in path.read_text(encoding="utf-8", errors="replace").splitlines()[1]
    except (OSError, IndexError):
        return False


def install_policy(base: Path, command: str) -> list[str]:
    """Put ovsndu's policy-rc.d in place under *base*, keeping another one chained."""
    path, chained = base / POLICY, base / CHAINED
    text = render_policy(command)
    try:
        if path.exists() and not is_ours(path):
            if chained.exists():
                raise OvsnduError(f"{path} is not ovsndu's and {chained} exists already: "
                                  f"move one of them away")
            os.replace(path, chained)
        elif path.is_file() and path.read_text(encoding="utf-8") == text:
            return []
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".ovsndu-tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o755)
        tmp.replace(path)
    except OSError as exc:
        raise OvsnduError(f"cannot write {path}: {exc.strerror or exc}") from None
    return [str(path)]


def uninstall_policy(base: Path) -> list[str]:
    """Remove ovsndu's policy-rc.d; the chained one (if any) goes back in its place."""
    path, chained = base / POLICY, base / CHAINED
    if not is_ours(path):
        return []
    try:
        if chained.exists():
            os.replace(chained, path)
        else:
            path.unlink()
    except OSError as exc:
        raise OvsnduError(f"cannot restore {path}: {exc.strerror or exc}") from None
    return [str(path)]


def decide(unit: str, action: str, script: str, package: str) -> Decision:
    """What the hook does for *unit* *action*, asked from *package*'s maintainer *script*.

    Pure.  Only Open vSwitch's own preinst/postinst are changed; an operator's or
    another package's request (and a removal: the prerm) keeps its stock meaning.
    """
    if unit not in UNITS or package not in PACKAGES:
        return "allow"
    if script == "preinst" and action == "stop" and unit != "openvswitch-switch.service":
        return "deny"
    restart = action in ("restart", "start", "try-restart", "reload", "force-reload",
                         "reload-or-restart", "try-reload-or-restart")
    if script == "postinst" and restart and unit in UPGRADE_UNITS:
        return "upgrade"
    return "allow"


def _say(line: str) -> None:
    """On apt's output (stderr) and in the journal."""
    print(f"ovsndu: {line}", file=sys.stderr, flush=True)
    failed = "FAILED" in line or "ROLLED_BACK" in line
    (log.warning if failed else log.info)("package.hook", event_kind="package",
                                          reason=line)


@dataclass
class HookResult:
    """What the hook decided and did."""

    decision: Decision
    exit_code: int
    message: str = ""


def run_hook(cfg: Any, unit: str, action: str, env: dict[str, str] | None = None,
             say: Any = None) -> HookResult:
    """Decide for one policy-rc.d question; carry out a live upgrade when it is one."""
    from ovsndu.control import SupervisorUnreachable, request

    env = dict(os.environ if env is None else env)
    say = say or _say
    decision = decide(unit, action, env.get("DPKG_MAINTSCRIPT_NAME", ""),
                      env.get("DPKG_MAINTSCRIPT_PACKAGE", ""))
    if decision == "allow":
        return HookResult("allow", ALLOW)
    try:  # only a running supervisor makes this a live upgrade
        request(cfg.ovsndu.control_socket, {"op": "status"}, timeout=10)
    except (SupervisorUnreachable, OvsnduError, OSError) as exc:
        say(f"no ovsndu supervisor answers ({exc}): {unit} {action} proceeds as packaged")
        return HookResult("allow", ALLOW, "no ovsndu supervisor runs: stock behaviour")
    if decision == "deny":
        say(f"keeping {unit} running while {env.get('DPKG_MAINTSCRIPT_PACKAGE')} is "
            f"unpacked (the postinst's restart becomes a live upgrade)")
        return HookResult("deny", DENY)
    return _upgrade(cfg, request, say)


def ovsdb_server_replaced(rundir: str, installed: str = "/usr/sbin/ovsdb-server") -> bool:
    """Whether the running ovsdb-server's binary differs from the *installed* one (or
    cannot be told).  A reinstalled but identical binary is not a reason to restart it:
    every restart stalls vswitchd's main thread (docs/upgrade.md)."""
    try:
        pid = int((Path(rundir) / "ovsdb-server.pid").read_text().strip())
        if not os.readlink(f"/proc/{pid}/exe").endswith(" (deleted)"):
            return False
        return _digest(f"/proc/{pid}/exe") != _digest(installed)
    except (OSError, ValueError):
        return True


def _digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _upgrade(cfg: Any, request: Any, say: Any) -> HookResult:
    """The live upgrade of vswitchd first (converting the database online to the newly
    installed schema), then, only if it committed, ovsdb-server's restart onto its new
    binary: an unconvertible schema or a broken vswitchd leaves both old daemons serving
    (ovs-ctl, restarting ovsdb-server, would replace an unconvertible database with an
    empty one)."""
    replaced = ovsdb_server_replaced(cfg.ovs.rundir)
    say(f"package upgrade: live upgrade of ovs-vswitchd to {cfg.ovs.vswitchd}")

    def show(event: dict[str, Any]) -> None:
        if event.get("event") == "phase_failed":
            say(f"  {event.get('phase')}: FAILED: {event.get('reason')}")

    try:
        result = request(cfg.ovsndu.control_socket,
                         {"op": "reload", "vswitchd": cfg.ovs.vswitchd, "schema": ""},
                         on_event=show)
    except OvsnduError as exc:
        result = {"outcome": "failed", "reason": str(exc)}
    outcome, reason = result.get("outcome"), result.get("reason") or ""
    record = result.get("record") or {}
    if outcome != "committed":
        say(f"live upgrade {str(outcome).upper()}: {reason}; the old ovs-vswitchd keeps "
            f"serving; the new package is installed but NOT running (ovsndu status, "
            f"journalctl -u ovs-vswitchd)"
            + ("; ovsdb-server NOT restarted either (its new binary waits for a fixed "
               "package; if the new schema cannot convert the database, restarting "
               "ovsdb-server makes ovs-ctl replace it with an empty one)"
               if replaced else ""))
        return HookResult("upgrade", DENY, f"{outcome}: {reason}")
    schema = record.get("schema") or {}
    converted = (f"; database schema {schema.get('database')} → {schema.get('target')} "
                 f"converted online" if schema.get("converted") else "")
    gap = record.get("handover_gap_ms")
    say(f"live upgrade committed: {record.get('to_version')}"
        + (f"; handover {gap:.0f} ms" if gap else "") + converted)
    if not replaced:
        say("package upgrade: ovsdb-server's binary is unchanged: not restarted")
        return HookResult("upgrade", DENY, "committed")
    say("package upgrade: restarting ovsdb-server alone (new binary); ovs-vswitchd keeps "
        "running and reconnects")
    proc = subprocess.run(["systemctl", "restart", "ovsdb-server.service"],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        say(f"FAILED to restart ovsdb-server: {proc.stderr.strip()[:300]}; ovs-vswitchd "
            f"keeps serving its flows (see systemctl status ovsdb-server)")
        return HookResult("upgrade", DENY, "committed; ovsdb-server restart failed")
    from ovsndu.ovs import dbschema

    with contextlib.suppress(OvsnduError):
        took = dbschema.wait_vswitchd_caught_up(cfg.ovs.db, 30)
        say(f"ovs-vswitchd reconnected to the new ovsdb-server after {took:.2f} s")
    return HookResult("upgrade", DENY, "committed")
