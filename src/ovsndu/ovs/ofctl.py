"""``ovs-ofctl`` as a subprocess, aimed at a bridge's management socket.

Python OpenFlow stacks mis-encode nested ``ct`` actions or are unmaintained (see
docs/state.md); ovs-ofctl is the reference encoder and streams bundles fast.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ovsndu.errors import VswitchdError

OF_VERSIONS = ("OpenFlow10", "OpenFlow11", "OpenFlow12", "OpenFlow13", "OpenFlow14",
               "OpenFlow15")


def best_version(protocols: list[str], *, at_least: str = "OpenFlow10") -> str | None:
    """The highest OpenFlow version a bridge allows (an empty list allows all), if ≥ *at_least*."""
    allowed = [v for v in OF_VERSIONS if not protocols or v in protocols]
    floor = OF_VERSIONS.index(at_least)
    usable = [v for v in allowed if OF_VERSIONS.index(v) >= floor]
    return usable[-1] if usable else None


def mgmt_target(rundir: str | Path, bridge: str) -> str:
    """The ``unix:`` target of a bridge's OpenFlow management socket."""
    return f"unix:{Path(rundir) / bridge}.mgmt"


def ofctl(rundir: str | Path, bridge: str, version: str, *args: str,
          extra: tuple[str, ...] = (), timeout: float = 300.0, input_text: str | None = None
          ) -> str:
    """Run ``ovs-ofctl -O VERSION ARGS[0] unix:<rundir>/<bridge>.mgmt ARGS[1:]``; return stdout."""
    command, *rest = args
    argv = ["ovs-ofctl", "-O", version, *extra, command, mgmt_target(rundir, bridge), *rest]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input_text, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VswitchdError(f"ovs-ofctl {command} {bridge}: {exc}") from None
    if proc.returncode != 0:
        reason = _first_error(proc.stderr) or f"exit status {proc.returncode}"
        raise VswitchdError(f"ovs-ofctl {command} {bridge}: {reason}")
    return proc.stdout


def _first_error(stderr: str) -> str:
    """The most telling line: the first OpenFlow error (it quotes the rejected message)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Error "):
            return ln
    for ln in lines:
        if "ovs-ofctl:" in ln:
            return ln.split("ovs-ofctl:", 1)[1].strip()
    return lines[0] if lines else ""
