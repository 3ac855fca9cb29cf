"""Installing and removing the systemd drop-in and the D-Bus policy.

The files ship in the package (``ovsndu/unitfiles``, copies of the repository's
``systemd/`` directory):

* ``ovsndu.conf`` → ``/etc/systemd/system/ovs-vswitchd.service.d/ovsndu.conf``: makes
  the supervisor the main process of Debian's ``ovs-vswitchd.service`` and
  ``ExecReload=`` a synchronous ``ovsndu reload``.  The shipped file names
  ``/usr/local/bin/ovsndu``; installing writes the command of the running ovsndu instead
  (its console script beside ``sys.executable``, else ``python -m ovsndu``).
* ``org.ovsndu.Supervisor1.conf`` → ``/etc/dbus-1/system.d/``: lets the supervisor own
  its bus name.

Both operations are idempotent (a file already in place is left alone, a missing one
is not an error) and run ``systemctl daemon-reload`` when systemd runs.  ``root``
installs into another tree (an image, a container's root, a test directory); systemd
is then not told.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ovsndu.errors import OvsnduError
from ovsndu.systemd import packaging, units

UNIT = "ovs-vswitchd.service"
DROPIN = Path("etc/systemd/system/ovs-vswitchd.service.d/ovsndu.conf")
POLICY = Path("etc/dbus-1/system.d/org.ovsndu.Supervisor1.conf")
SHIPPED_COMMAND = "/usr/local/bin/ovsndu"
FILES = {"ovsndu.conf": DROPIN, "org.ovsndu.Supervisor1.conf": POLICY}


@dataclass
class Report:
    """What an install or uninstall did."""

    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    daemon_reload: str = "not needed"

    def lines(self) -> list[str]:
        """One line per file and one for systemd."""
        return ([f"changed:   {p}" for p in self.changed]
                + [f"unchanged: {p}" for p in self.unchanged]
                + [f"systemctl daemon-reload: {self.daemon_reload}"])


def shipped(name: str) -> str:
    """A shipped file's text."""
    return (resources.files("ovsndu") / "unitfiles" / name).read_text(encoding="utf-8")


def ovsndu_command() -> str:
    """The command line that runs this ovsndu (for ExecStart=/ExecReload=)."""
    script = Path(sys.executable).parent / "ovsndu"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m ovsndu"


def render_dropin(command: str | None = None) -> str:
    """The drop-in with *command* (default :func:`ovsndu_command`) in place of the shipped."""
    return shipped("ovsndu.conf").replace(SHIPPED_COMMAND, command or ovsndu_command())


def systemd_running(root: Path) -> bool:
    """Whether systemd is the init of this system (``sd_booted()``) and *root* is ``/``."""
    return root.resolve() == Path("/") and os.path.isdir("/run/systemd/system")


def _daemon_reload() -> str:
    try:
        proc = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OvsnduError(f"systemctl daemon-reload: {exc}") from None
    if proc.returncode != 0:
        raise OvsnduError(f"systemctl daemon-reload failed: {proc.stderr.strip()}")
    # dbus-daemon notices new policy files by itself; ask it anyway (best effort).
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["busctl", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                        "org.freedesktop.DBus", "ReloadConfig"], capture_output=True,
                       timeout=10, check=False)
    return "done"


def _finish(report: Report, root: Path, daemon_reload: bool) -> Report:
    if not daemon_reload:
        report.daemon_reload = "skipped (--no-reload)"
    elif not systemd_running(root):
        report.daemon_reload = "skipped (systemd is not running here)"
    else:
        report.daemon_reload = _daemon_reload()
    return report


def _note(report: Report, changed: list[str], path: Path) -> None:
    if changed:
        report.changed.extend(changed)
    else:
        report.unchanged.append(str(path))


def install(root: str | os.PathLike[str] = "/", *, command: str | None = None,
            daemon_reload: bool = True) -> Report:
    """Put the drop-in and the policy in place under *root*."""
    base = Path(root)
    report = Report()
    contents = {DROPIN: render_dropin(command), POLICY: shipped("org.ovsndu.Supervisor1.conf"),
                units.OVSDB_DROPIN: units.OVSDB_DROPIN_TEXT}
    stock = units.stock_unit(base)
    override = base / units.OVERRIDE
    if stock is not None and (not override.exists() or units.is_ours(override)):
        contents[units.OVERRIDE] = units.render_override(stock)
    elif stock is not None:
        raise OvsnduError(f"{override} exists and is not ovsndu's: merge the dependency "
                          f"changes by hand (see docs/upgrade.md) or move it away")
    for rel, text in contents.items():
        path = base / rel
        try:
            if path.is_file() and path.read_text(encoding="utf-8") == text:
                report.unchanged.append(str(path))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".ovsndu-tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.chmod(0o644)
            tmp.replace(path)
        except OSError as exc:
            raise OvsnduError(f"cannot write {path}: {exc.strerror or exc}") from None
        report.changed.append(str(path))
    policy = packaging.install_policy(base, command or ovsndu_command())
    _note(report, policy, base / packaging.POLICY)
    return _finish(report, base, daemon_reload)


def uninstall(root: str | os.PathLike[str] = "/", *, daemon_reload: bool = True) -> Report:
    """Take the drop-in and the policy away from under *root*."""
    base = Path(root)
    report = Report()
    for rel in (DROPIN, POLICY, units.OVSDB_DROPIN, units.OVERRIDE):
        path = base / rel
        if rel == units.OVERRIDE and path.exists() and not units.is_ours(path):
            report.unchanged.append(f"{path} (not ovsndu's, left alone)")
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            report.unchanged.append(str(path))
            continue
        except OSError as exc:
            raise OvsnduError(f"cannot remove {path}: {exc.strerror or exc}") from None
        report.changed.append(str(path))
    for rel in (DROPIN, units.OVSDB_DROPIN):  # drop-in directories, if nothing else is in them
        with contextlib.suppress(OSError):
            (base / rel).parent.rmdir()
    policy = packaging.uninstall_policy(base)
    _note(report, policy, base / packaging.POLICY)
    return _finish(report, base, daemon_reload)
