"""The ``ovsndu`` command line: argument parsing and exit codes only."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ovsndu.errors import OvsnduError
from ovsndu.model import Snapshot, diff_snapshots
from ovsndu.render import diff_table, snapshot_table

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
    try:
        return Snapshot.from_dict(data)
    except OvsnduError as exc:
        raise OvsnduError(f"{path}: {exc}") from None


def _cmd_diff(args: argparse.Namespace) -> int:
    diffs = diff_snapshots(load_snapshot(args.a), load_snapshot(args.b))
    print(diff_table(diffs))
    return EXIT_OK if all(d.equal for d in diffs) else EXIT_DIFFERENT


def _cmd_restore(args: argparse.Namespace) -> int:
    from ovsndu.ovs.restore import restore_snapshot

    snap = load_snapshot(args.file)
    report = restore_snapshot(snap, args.rundir, args.db, tcp_seq_check=args.tcp_seq_check)
    steps = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in report.durations.items())
    total = sum(report.counts.values())
    print(f"restored and verified {total} entries in all nine categories ({steps})")
    return EXIT_OK


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
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser("demo", help="the embedded default: a private OVS sandbox with sample "
                       "state in every category")
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; expected failures print one line and exit non-zero."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OvsnduError as exc:
        print(f"ovsndu {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"ovsndu {args.command}: interrupted", file=sys.stderr)
        return 130
