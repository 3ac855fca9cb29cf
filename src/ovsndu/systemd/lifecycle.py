"""What happens to ovs-vswitchd when the supervisor's process ends, under systemd.

The drop-in kills only the supervisor (``KillMode=process``), so a supervisor that
crashes, is SIGKILLed or fails its watchdog leaves ovs-vswitchd forwarding, and
``stop-post`` starts the unit again (a plain *start* job: the new supervisor adopts the
running vswitchd).  Not ``Restart=``: on systemd 252 an automatic restart is a
*restart* job, which propagates through Debian's units (openvswitch-switch Requires=
ovs-vswitchd, ovsdb-server is PartOf= openvswitch-switch) and restarts ovsdb-server —
vswitchd then stops forwarding for about half a second.  A *requested* stop must still stop the
switch: the supervisor marks it (:func:`mark_stopping`) before it stops vswitchd, and
``ExecStopPost=ovsndu stop-post`` (:func:`stop_post`) stops whatever is left when the
stop was requested or the supervisor exited cleanly, and nothing after a crash.

:func:`decide` is the pure rule; systemd passes ``$SERVICE_RESULT``, ``$EXIT_CODE`` and
``$EXIT_STATUS`` to ExecStopPost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from ovsndu.errors import VswitchdError
from ovsndu.ovs import daemon
from ovsndu.ovs.daemon import VswitchdSpec

STOP_MARKER = "ovsndu.stopping"
UNIT = "ovs-vswitchd.service"

Decision = Literal["stop", "keep"]


def marker_path(rundir: str | os.PathLike[str]) -> Path:
    """The file that says "a stop was requested" (in the OVS run directory, a tmpfs)."""
    return Path(rundir) / STOP_MARKER


def mark_stopping(rundir: str | os.PathLike[str]) -> None:
    """Record that the supervisor was told to stop (best effort: never raises)."""
    with contextlib.suppress(OSError):
        fd = os.open(marker_path(rundir), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                     0o600)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)


def clear_stopping(rundir: str | os.PathLike[str]) -> None:
    """Forget an earlier stop request (a supervisor that starts)."""
    with contextlib.suppress(OSError):
        marker_path(rundir).unlink()


def decide(service_result: str, exit_code: str, stop_requested: bool) -> Decision:
    """Whether ExecStopPost stops the switch: after a requested stop or a clean exit only."""
    if stop_requested:
        return "stop"
    if service_result == "success" and exit_code in ("", "exited"):
        return "stop"
    return "keep"


def stop_vswitchd(spec: VswitchdSpec, pid: int) -> None:
    """Ask vswitchd *pid* to exit as ovs-ctl does; SIGKILL after 10 s."""
    try:
        with daemon.unixctl_for(spec, pid, timeout=5) as appctl:
            appctl("exit")
    except VswitchdError:
        pass
    if not daemon.wait_gone(pid, 10):
        daemon.kill(pid)
    daemon.remove_stale_files(spec, pid)


def start_again(env: Mapping[str, str]) -> str:
    """Queue a start of the unit (it runs once this stop has finished); what was done.

    ``--job-mode=fail``: a stop someone asked for meanwhile is never turned into a start.
    """
    if not env.get("INVOCATION_ID"):
        return "not run by systemd: start the supervisor again to adopt it"
    try:
        proc = subprocess.run(["systemctl", "--no-block", "--job-mode=fail", "start", UNIT],
                              capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not queue a start of {UNIT}: {exc}"
    if proc.returncode != 0:
        return f"could not queue a start of {UNIT}: {proc.stderr.strip()[:200]}"
    return f"a start of {UNIT} is queued: the new supervisor adopts it"


def stop_post(spec: VswitchdSpec, env: Mapping[str, str]) -> tuple[int, str]:
    """ExecStopPost: stop what is left after a requested stop; keep it after a crash.

    Returns (exit status, one line for the journal).
    """
    result = env.get("SERVICE_RESULT", "success")
    code, status = env.get("EXIT_CODE", ""), env.get("EXIT_STATUS", "")
    requested = marker_path(spec.rundir).exists()
    pids = [p for p in (daemon.read_pid(spec.pidfile), daemon.read_pid(spec.standby_pidfile))
            if p is not None]
    if decide(result, code, requested) == "keep":
        serving = ", ".join(str(p) for p in pids) or "none"
        return 0, (f"the supervisor ended ({result}: {code} {status}); ovs-vswitchd pid "
                   f"{serving} keeps forwarding; {start_again(env)}")
    for pid in pids:
        stop_vswitchd(spec, pid)
    clear_stopping(spec.rundir)
    still = [p for p in pids if daemon.read_pid(spec.pidfile) == p]
    if still:
        with contextlib.suppress(ProcessLookupError):
            os.kill(still[0], signal.SIGKILL)
        return 1, f"ovs-vswitchd pid {still[0]} did not stop"
    stopped = ", ".join(str(p) for p in pids)
    return 0, f"stopped ovs-vswitchd pid {stopped}" if pids else "nothing left to stop"
