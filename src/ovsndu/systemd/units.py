"""The unit dependencies ovsndu changes, so that ovsdb-server can restart under a live vswitchd.

Debian's ``ovs-vswitchd.service`` has ``Requires=ovsdb-server.service``,
``ReloadPropagatedFrom=ovsdb-server.service`` and ``PartOf=openvswitch-switch.service``:
restarting ovsdb-server (or openvswitch-switch, whose own ``Requires=ovsdb-server``
carries the restart on) restarts vswitchd, and reloading ovsdb-server reloads it.  A
drop-in cannot take a dependency away, so ``ovsndu install-systemd`` writes a full
``/etc/systemd/system/ovs-vswitchd.service``: the installed stock unit with those three
lines replaced by ``Wants=ovsdb-server.service`` (start order stays ``After=``).  The
supervisor keeps vswitchd running while ovsdb-server restarts; vswitchd reconnects by
itself.  ``ovsdb-server.service`` gets a drop-in with ``PIDFile=`` so that its stock
``systemctl reload`` (``ovs-ctl restart``) does not leave the unit dead.
"""

from __future__ import annotations

from pathlib import Path

OVERRIDE = Path("etc/systemd/system/ovs-vswitchd.service")
OVSDB_DROPIN = Path("etc/systemd/system/ovsdb-server.service.d/ovsndu.conf")
STOCK = (Path("lib/systemd/system/ovs-vswitchd.service"),
         Path("usr/lib/systemd/system/ovs-vswitchd.service"))
MARK = "# ovsndu: written by `ovsndu install-systemd`"
DROPPED = ("Requires=ovsdb-server.service", "ReloadPropagatedFrom=ovsdb-server.service",
           "PartOf=openvswitch-switch.service")
OVSDB_DROPIN_TEXT = f"""{MARK}; removed by `ovsndu uninstall-systemd`.
# Debian's ExecReload (ovs-ctl restart) replaces the daemon; without a PIDFile= the
# Type=forking unit loses it and ends dead.  ovs-vswitchd.service (under ovsndu) does
# not follow ovsdb-server's restarts or reloads: vswitchd reconnects with its flows.
[Service]
PIDFile=/run/openvswitch/ovsdb-server.pid
"""


def stock_unit(root: Path) -> str | None:
    """The packaged ovs-vswitchd.service under *root*, if installed."""
    for rel in STOCK:
        if (root / rel).is_file():
            return (root / rel).read_text(encoding="utf-8")
    return None


def render_override(stock: str) -> str:
    """*stock* with the propagating dependencies replaced (see the module docstring)."""
    out = [f"{MARK} from the packaged unit; removed by `ovsndu uninstall-systemd`.",
           "# Requires=, ReloadPropagatedFrom=ovsdb-server and PartOf=openvswitch-switch are",
           "# left out: restarting or reloading ovsdb-server leaves vswitchd running."]
    section = ""
    for line in stock.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped
        if section == "[Unit]" and stripped in DROPPED:
            if stripped.startswith("Requires="):
                out.append("Wants=ovsdb-server.service")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def is_ours(path: Path) -> bool:
    """Whether *path* is a file ovsndu wrote (never remove an administrator's own unit)."""
    try:
        return path.read_text(encoding="utf-8").startswith(MARK)
    except OSError:
        return False
