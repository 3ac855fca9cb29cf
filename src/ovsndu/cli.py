"""The ``ovsndu`` command line: argument parsing and exit codes only."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovsndu.config import DEFAULT_PATH, Config, load_config
from ovsndu.errors import OvsnduError
from ovsndu.model import Snapshot, diff_snapshots
from ovsndu.render import diff_table, snapshot_table, table

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_ERROR = 2


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from ovsndu.ovs.readers import read_snapshot

    snap = read_snapshot(args.rundir, args.db)
    text = (json.dumps(snap.to_dict(), indent=1) if args.format == "json"
            else snapshot_table(snap))
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return EXIT_OK


def load_snapshot(path: str) -> Snapshot:
    """Read a snapshot JSON file; OvsnduError with the file name when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise OvsnduError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise OvsnduError(f"{path}: not JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise OvsnduError(f"{path}: not a snapshot: JSON nested too deeply") from None
    try:
        return Snapshot.from_dict(data)
    except OvsnduError as exc:
        raise OvsnduError(f"{path}: {exc}") from None
    except (RecursionError, TypeError, ValueError, AttributeError, KeyError) as exc:
        raise OvsnduError(f"{path}: not a snapshot: {type(exc).__name__}") from None


def _cmd_diff(args: argparse.Namespace) -> int:
    diffs = diff_snapshots(load_snapshot(args.a), load_snapshot(args.b))
    print(diff_table(diffs))
    return EXIT_OK if all(d.equal for d in diffs) else EXIT_DIFFERENT


def _cmd_restore(args: argparse.Namespace) -> int:
    from ovsndu.ovs.restore import restore_snapshot

    snap = load_snapshot(args.file)
    report = restore_snapshot(snap, args.rundir, args.db, tcp_seq_check=args.tcp_seq_check,
                              uncarried=args.uncarried)
    steps = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in report.durations.items())
    total = sum(report.counts.values())
    for anomaly in report.anomalies:
        print(f"anomaly: {anomaly}")
    print(f"restored and verified {total} entries in all nine categories ({steps})")
    return EXIT_OK


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _cmd_supervise(args: argparse.Namespace) -> int:
    from ovsndu.supervisor import supervise
    from ovsndu.systemd.journal import configure_logging

    configure_logging()
    return supervise(_config(args))


def _phase_line(event: dict[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "phase":
        return f"{event['phase']:<11} ..."
    if kind in ("phase_done", "phase_failed"):
        verdict = "ok" if kind == "phase_done" else f"FAILED: {event.get('reason', '')}"
        return f"{event['phase']:<11} {verdict} ({event['seconds'] * 1000:.0f} ms)"
    return None


def _cmd_reload(args: argparse.Namespace) -> int:
    from ovsndu.control import SupervisorUnreachable, request

    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise OvsnduError(f"--timeout must be a number of seconds above 0, not {args.timeout}")
    cfg = _config(args)
    # The binary is re-read from the config file at every reload (systemctl reload).
    payload: dict[str, Any] = {"op": "reload", "vswitchd": args.vswitchd or cfg.ovs.vswitchd,
                               "timeout": args.timeout, "schema": args.schema or ""}

    def show(event: dict[str, Any]) -> None:
        line = _phase_line(event)
        if line and not args.json:
            print(line, flush=True)

    if os.environ.get("INVOCATION_ID") and os.environ.get("MAINPID"):
        # ExecReload: a stop of the unit SIGTERMs us. The supervisor ends the upgrade
        # (it finishes or rolls back before it stops); dying of the signal would make
        # systemd end the stopped unit "failed" instead of "inactive".
        import signal

        def stopping(_sig: int, _frame: object) -> None:
            print("ovsndu reload: the unit is stopping; the supervisor ends the upgrade "
                  "before it stops (see `ovsndu history`)", flush=True)
            os._exit(0)

        signal.signal(signal.SIGTERM, stopping)

    try:
        result = request(cfg.ovsndu.control_socket, payload, on_event=show)
    except SupervisorUnreachable as exc:
        print(f"ovsndu reload: refused: {exc}", file=sys.stderr)
        return 2
    except OvsnduError as exc:  # connected, then no answer: the outcome is unknown here
        print(f"ovsndu reload: outcome unknown: {exc}; see `ovsndu status` and the journal",
              file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        record = result.get("record") or {}
        gap = record.get("handover_gap_ms")
        extra = f"; handover {gap:.0f} ms" if gap else ""
        print(f"{result.get('outcome')}: {result.get('reason') or 'new vswitchd serving'}"
              f"{extra}")
        schema = record.get("schema") or {}
        if schema.get("converted"):
            back = ", converted back" if schema.get("reverted") else ""
            print(f"database schema {schema.get('database')} -> {schema.get('target')}{back}")
    code = result.get("exit_code")
    return code if isinstance(code, int) else 3


def _cmd_reexec(args: argparse.Namespace) -> int:
    import time

    from ovsndu.control import SupervisorUnreachable, request

    cfg = _config(args)
    try:
        answer = request(cfg.ovsndu.control_socket, {"op": "reexec"}, timeout=30)
    except SupervisorUnreachable as exc:
        print(f"ovsndu reexec: refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if answer.get("outcome") != "reexec":
        print(f"ovsndu reexec: {answer.get('outcome')}: {answer.get('reason')}", file=sys.stderr)
        code = answer.get("exit_code")
        return code if isinstance(code, int) else 3
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            status = request(cfg.ovsndu.control_socket, {"op": "status"}, timeout=10)
        except OvsnduError:
            continue
        if status.get("phase") == "idle" and \
                status.get("supervisor_instance") != answer.get("supervisor_instance"):
            vs = status.get("vswitchd") or {}
            print(f"supervisor pid {status.get('supervisor_pid')} now runs ovsndu "
                  f"{status.get('ovsndu_version', '?')}; vswitchd pid {vs.get('pid')} "
                  f"(was {answer.get('vswitchd_pid')}) kept serving")
            return EXIT_OK if vs.get("pid") == answer.get("vswitchd_pid") else 3
    print("ovsndu reexec: the supervisor did not come back within 60 s", file=sys.stderr)
    return 3


def _cmd_stop_post(args: argparse.Namespace) -> int:
    from ovsndu.systemd import lifecycle
    from ovsndu.upgrade.serving import spec_of

    code, line = lifecycle.stop_post(spec_of(_config(args)), os.environ)
    print(f"ovsndu stop-post: {line}")
    return code


def _cmd_status(args: argparse.Namespace) -> int:
    from ovsndu.control import SupervisorUnreachable, request
    from ovsndu.upgrade.history import HistoryStore

    cfg = _config(args)
    try:
        status = request(cfg.ovsndu.control_socket, {"op": "status"}, timeout=10)
        code = EXIT_OK
    except SupervisorUnreachable:
        last = HistoryStore(cfg.ovsndu.state_dir).last()
        status = {"phase": "supervisor not running", "vswitchd": None,
                  "last_upgrade": last.to_dict() if last else None}
        code = 3
    status.pop("event", None)
    from ovsndu.systemd.dbus import unit_state

    unit = status["systemd"] = unit_state()
    if args.json:
        print(json.dumps(status, indent=1))
        return code
    vs = status.get("vswitchd") or {}
    print(f"phase:    {status.get('phase')}")
    if unit:
        print(f"unit:     {unit['unit']} {unit['active_state']} ({unit['sub_state']}), "
              f"MainPID {unit['main_pid']}")
    print(f"vswitchd: pid {vs.get('pid')}, {vs.get('version')}" if vs else "vswitchd: -")
    last = status.get("last_upgrade")
    if last:
        print(f"last upgrade: {last['id']} {last['outcome']} ({last['from_version']} -> "
              f"{last['to_version']}) {last.get('reason') or ''}")
        schema = last.get("schema") or {}
        if schema.get("target"):
            done = ("converted back" if schema.get("reverted") else "converted"
                    if schema.get("converted") else schema.get("action", ""))
            print(f"database schema: {schema.get('database')} -> {schema['target']} ({done})")
    return code


def _cmd_history(args: argparse.Namespace) -> int:
    from ovsndu.upgrade.history import HistoryStore

    records = HistoryStore(_config(args).ovsndu.state_dir).all()
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=1))
        return EXIT_OK
    rows = [(r.id, r.outcome, r.from_version.split()[-1] if r.from_version else "-",
             r.to_version.split()[-1] if r.to_version else "-",
             " ".join(f"{p.phase}={p.duration_s * 1000:.0f}ms" for p in r.phases),
             r.reason) for r in records]
    print(table(("id", "outcome", "from", "to", "phases", "reason"), rows))
    return EXIT_OK


def _cmd_systemd_unit(args: argparse.Namespace) -> int:
    from ovsndu.systemd import unit as systemd_unit

    action = systemd_unit.install if args.command == "install-systemd" else systemd_unit.uninstall
    if args.command == "uninstall-systemd" and systemd_unit.systemd_running(Path(args.root)):
        print(_release_supervisor(args))
    print("\n".join(action(args.root, daemon_reload=not args.no_reload).lines()))
    return EXIT_OK


def _release_supervisor(args: argparse.Namespace) -> str:
    """Before the stock unit comes back: the running supervisor hands vswitchd to systemd
    as the unit's main process and exits, so Debian's unit owns the running switch."""
    import time

    from ovsndu.control import SupervisorUnreachable, request

    cfg = load_config(None)
    try:
        answer = request(cfg.ovsndu.control_socket, {"op": "release"}, timeout=30)
    except SupervisorUnreachable:
        return "supervisor: not running"
    if answer.get("outcome") != "released":
        raise OvsnduError(f"the supervisor did not let go: {answer.get('reason')}")
    pid = answer.get("supervisor_pid")
    deadline = time.monotonic() + 30
    while isinstance(pid, int) and os.path.exists(f"/proc/{pid}") and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    return (f"supervisor: pid {pid} exited; ovs-vswitchd pid {answer.get('vswitchd_pid')} "
            f"keeps running as the unit's main process")


def _cmd_package_hook(args: argparse.Namespace) -> int:
    from ovsndu.systemd.journal import configure_logging
    from ovsndu.systemd.packaging import run_hook

    configure_logging(console=False)
    return run_hook(_config(args), args.unit, args.action).exit_code


def _cmd_demo(args: argparse.Namespace) -> int:
    from ovsndu.demo import run_demo

    return run_demo(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="ovsndu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("snapshot", help="read a running vswitchd's state (all nine categories)")
    p.add_argument("--rundir", help="OVS run directory (default: $OVS_RUNDIR or "
                   "/var/run/openvswitch)")
    p.add_argument("--db", help="OVSDB socket (default: unix:RUNDIR/db.sock)")
    p.add_argument("--format", choices=("json", "table"), default="table")
    p.add_argument("-o", "--output", help="write to FILE instead of standard output")
    p.set_defaults(func=_cmd_snapshot)

    p = sub.add_parser("diff", help="compare two snapshot JSON files (exit 1 when different)")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(func=_cmd_diff)

    p = sub.add_parser("restore", help="install a saved snapshot into a running vswitchd and "
                       "verify it by read-back")
    p.add_argument("file")
    p.add_argument("--rundir", help="OVS run directory (default: $OVS_RUNDIR or "
                   "/var/run/openvswitch)")
    p.add_argument("--db", help="OVSDB socket (default: unix:RUNDIR/db.sock)")
    p.add_argument("--tcp-seq-check", action="store_true",
                   help="keep userspace conntrack TCP sequence checking on (restored "
                   "connections then stall; see docs/state.md)")
    p.add_argument("--uncarried", choices=("report", "refuse"), default="report",
                   help="entries OVS offers no way to recreate: name them and restore the "
                   "rest (report, the default), or refuse before any change")
    p.set_defaults(func=_cmd_restore)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help=f"TOML config (default {DEFAULT_PATH}; missing = "
                       "system defaults)")

    p = sub.add_parser("supervise", help="run the supervisor (the unit's main process)")
    with_config(p)
    p.set_defaults(func=_cmd_supervise)

    p = sub.add_parser("reload", help="live-upgrade the running vswitchd; exit 0 taken over, "
                       "1 rolled back, 2 refused, 3 internal error")
    with_config(p)
    p.add_argument("--vswitchd", help="the new binary (default: the configured path)")
    p.add_argument("--schema", help="the database schema file the new binary needs (default: "
                   "[ovs] schema for the configured binary, else the one beside the binary)")
    p.add_argument("--timeout", type=float, help="seconds for the whole upgrade")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_reload)

    p = sub.add_parser("reexec", help="replace the running supervisor by the installed ovsndu "
                       "(same process; ovs-vswitchd keeps forwarding)")
    with_config(p)
    p.set_defaults(func=_cmd_reexec)

    p = sub.add_parser("stop-post", help="ExecStopPost of the unit: stop what a requested "
                       "stop left, keep ovs-vswitchd forwarding after a supervisor crash")
    with_config(p)
    p.set_defaults(func=_cmd_stop_post)

    p = sub.add_parser("package-hook", help="asked by ovsndu's policy-rc.d when a package "
                       "script starts or stops an OVS unit: exit 101 = not run (see "
                       "docs/upgrade.md)")
    with_config(p)
    p.add_argument("unit")
    p.add_argument("action")
    p.set_defaults(func=_cmd_package_hook)

    p = sub.add_parser("status", help="phase, serving vswitchd, last upgrade")
    with_config(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("history", help="every upgrade, with phases, counts and digests")
    with_config(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_history)

    p = sub.add_parser("demo", help="the embedded default: a private OVS sandbox with sample "
                       "state in every category")
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_demo)

    for name, verb in (("install-systemd", "put in place"), ("uninstall-systemd", "take away")):
        p = sub.add_parser(name, help=f"{verb} the ovs-vswitchd.service drop-in and the D-Bus "
                           "policy (idempotent), then systemctl daemon-reload")
        p.add_argument("--root", default="/", help="install into this tree instead of / "
                       "(systemd is then not told)")
        p.add_argument("--no-reload", action="store_true", help="skip systemctl daemon-reload")
        p.set_defaults(func=_cmd_systemd_unit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; expected failures print one line and exit non-zero."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OvsnduError as exc:
        print(f"ovsndu {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except PermissionError as exc:
        who = "" if os.geteuid() == 0 else " (run it as root)"
        print(f"ovsndu {args.command}: error: {exc.strerror}: {exc.filename}{who}",
              file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"ovsndu {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"ovsndu {args.command}: interrupted", file=sys.stderr)
        return 130
