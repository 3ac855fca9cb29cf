"""The client: the process launched for one upgrade, the other end of the sync channel.

It receives the whole state from the supervisor (the server), rehearses it on the
new binary in a private dummy-datapath sandbox on a copy of the database (the
*validation*: every category installed and read back, conntrack as one entry of each
kind (:mod:`ovsndu.model.ct_kinds`); when nothing was lost the snapshot's digests are
the acknowledgements), and, when the supervisor hands over, installs the state into the
new live vswitchd, lifts ``flow-restore-wait``, verifies by read-back and says Ready.

Run by the supervisor as ``python -m ovsndu.upgrade.client ARGS``; exit 0 after
Commit, 1 after an abort, 3 on an error (the reason is on stderr and sent as Abort).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import secrets
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ovsndu.errors import OvsnduError, RestoreError, SyncAborted
from ovsndu.model import Conntrack, Port, Snapshot
from ovsndu.model.carried import check_carried, check_category
from ovsndu.model.ct_kinds import representatives
from ovsndu.model.delta import OPENFLOW, Delta, applied
from ovsndu.ovs import vlog
from ovsndu.ovs.catchup import CATCHUP_FILE, apply_catchup
from ovsndu.ovs.ct_defer import HOT_WINDOW_S
from ovsndu.ovs.dpdk import defuse_copy
from ovsndu.ovs.ovsdb import Ovsdb
from ovsndu.ovs.readers import StateReader, read_snapshot
from ovsndu.ovs.replay import Replayed
from ovsndu.ovs.restore import RestorePlan, Restorer, controlled_bridges, user_routes_only
from ovsndu.ovs.sandbox import Sandbox, backup_db
from ovsndu.ovs.uncarried import carried_only
from ovsndu.protocol.transport import receive_state
from ovsndu.upgrade.binlogs import REHEARSAL_LOG
from ovsndu.upgrade.leftovers import REHEARSAL_FILE, REHEARSAL_PREFIX

EXIT_COMMITTED = 0
EXIT_ABORTED = 1
EXIT_ERROR = 3


def _ofports(snap: Snapshot) -> set[tuple[str, str, str, int]]:
    return {(p.bridge, p.port, p.interface, p.ofport) for p in snap.categories["ports"]
            if isinstance(p, Port)}


def rehearse(snap: Snapshot, binary: str, live_db: str, workdir: Path,
             replayed: Replayed | None = None) -> dict[str, str]:
    """Install *snap* into *binary* in a dummy sandbox on a DB copy and read it back.

    Judged by the same rule as the live install (:mod:`ovsndu.model.carried`); when
    nothing was lost the snapshot's digests are the acknowledgements.  The dummy
    datapath gives ports other MACs and datapath numbers and reads no kernel routes,
    so for ``ports`` the OpenFlow numbers are compared and for ``routes`` the user routes.
    Entries that cannot be carried are left out of the comparison (the supervisor names them).
    Conntrack: one entry of each kind, and every ALG entry and related one, is replayed
    and read back (:func:`ovsndu.model.ct_kinds.representatives`): what the new binary
    accepts is proven per kind, not per connection (docs/upgrade.md, Rehearsal).
    *replayed*: the conntrack lines its plan makes are kept there, for the live plan.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db_copy = backup_db(live_db, workdir / "conf.db")
    defuse_copy(db_copy)  # no DPDK, no real DPDK devices in a rehearsal (ovs/dpdk.py)
    started = time.monotonic()
    with Sandbox(workdir / "run", vswitchd=binary, db_file=db_copy) as sb:
        wanted = rehearsal_state(snap)
        Restorer(sb.rundir, sb.db, pid=sb.vswitchd_pid, replayed=replayed).restore(
            wanted, verify=False)
        after = read_snapshot(sb.rundir, sb.db, pid=sb.vswitchd_pid, known=wanted)
    # Ports: OpenFlow numbers only; routes: user routes only (see above).
    got = user_routes_only(after)
    if _ofports(after) == _ofports(snap):
        got = got.replace("ports", wanted.categories["ports"])
    lost = check_carried(carried_only(wanted), got, elapsed=time.monotonic() - started)
    if lost:
        from ovsndu.render import entry_text

        raise RestoreError(lost[0].category, "the new binary read back a different state in "
                           "the rehearsal: " + lost[0].describe(entry_text))
    # Nothing lost: acknowledge the snapshot's digests.
    return snap.digests()


def rehearsal_state(snap: Snapshot) -> Snapshot:
    """What the rehearsal installs: *snap*'s user routes only, and of its conntrack
    entries the representatives of their kinds (:mod:`ovsndu.model.ct_kinds`)."""
    wanted = user_routes_only(snap)
    entries = [e for e in wanted.categories["conntrack"] if isinstance(e, Conntrack)]
    kinds = representatives(entries)
    if len(kinds) == len(entries):
        return wanted
    say(f"rehearsal: conntrack {len(kinds)} of {len(entries)} entries (one of each kind)")
    return wanted.replace("conntrack", kinds)


def keep_rehearsal_log(rundir: Path, workdir: Path, error: str = "") -> None:
    """The rehearsal vswitchd's log summarised (and its stderr's last lines) into the work
    directory, where the supervisor puts it into the record (:mod:`ovsndu.upgrade.binlogs`):
    its log file goes away with the rehearsal sandbox, and never reaches the journal."""
    summary = vlog.summarise(rundir / "ovs-vswitchd.log")
    summary["stderr"] = vlog.tail(rundir / "ovs-vswitchd.stderr")
    summary.pop("file", None)
    if error:
        summary["error"] = error[:1000]
    with contextlib.suppress(OSError):
        (workdir / REHEARSAL_LOG).write_text(json.dumps(summary))


def say(text: str) -> None:
    """One line to stderr (the client's log in the state directory): a full disk or a
    closed file must not fail the upgrade, so a line that cannot be written is lost."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


def check_controlled_bridges(expected: Snapshot, rundir: Path, db: str,
                             of_dir: Path | None) -> None:
    """Bridges with a ``Controller``-table controller: read their OpenFlow state back now,
    while flow-restore-wait still keeps their controllers away (after the lift they may
    rightly write, so the supervisor's read-back leaves them out)."""
    with Ovsdb(db) as conn:
        controlled = controlled_bridges(conn)
    if not controlled:
        return
    got = StateReader(rundir, db, of_dir=of_dir).openflow()
    # Only OpenFlow is compared: the traffic categories are left out of the uncarried
    # check (100k conntrack entries would cost ~1 s here, before the lift).
    want = carried_only(expected.replace("conntrack", ()).replace("fdb", ()))
    for category in OPENFLOW:
        mine = [e for e in want.categories[category] if getattr(e, "bridge", "") in controlled]
        have = [e for e in got[category] if getattr(e, "bridge", "") in controlled]
        lost = check_category(category, tuple(mine), tuple(have))
        if lost is not None:
            from ovsndu.render import entry_text

            raise RestoreError(category, "read-back before controllers connect lost state: "
                               + lost.describe(entry_text))


def install_live(plan: RestorePlan, rundir: Path, db: str, *, tcp_seq_check: bool,
                 of_dir: Path | None = None, catchup: Path | None = None) -> float:
    """Send the prepared plan to the new serving vswitchd (just started: *fresh*) and lift
    flow-restore-wait; returns the seconds it took.  The supervisor then verifies by
    read-back before it commits."""
    started = time.monotonic()
    restorer = Restorer(rundir, db, tcp_seq_check=tcp_seq_check, of_dir=of_dir)
    report = restorer.apply(plan, fresh=True)
    expected = plan.snapshot
    if catchup is not None and catchup.exists():
        # What changed in the old process after the snapshot (written by the supervisor
        # beside the token, after the old process stopped): applied before the lift.
        delta = Delta.from_dict(json.loads(catchup.read_text()))
        report.durations.update(apply_catchup(restorer, delta, plan.snapshot))
        # OpenFlow only (what check_controlled_bridges compares): applying the traffic
        # categories sorts all of them again (~1 s at 100k conntrack entries).
        expected = applied(plan.snapshot, delta, OPENFLOW)
    check_controlled_bridges(expected, rundir, db, of_dir)
    restorer.lift_flow_restore_wait()
    lifted = time.monotonic() - started
    # Forwarding runs again: the idle connections' entries now (ovsndu.ovs.ct_defer).
    later = restorer.replay_later(plan)
    steps = {k: round(v * 1000, 2) for k, v in report.durations.items()}
    say("timings " + json.dumps({**steps, "lifted": round(lifted * 1000, 2),
                                 "ct_later_done": round((time.monotonic() - started) * 1000, 2),
                                 "ct_deferred": later["deferred"],
                                 "ct_repaired": later["repaired"]}))
    return lifted


async def run(args: argparse.Namespace) -> int:
    """Receive, rehearse, wait for the handover, install, report Ready, wait for Commit."""
    token = Path(args.token_file).read_bytes()
    plans: list[RestorePlan] = []
    began = time.monotonic()

    def since() -> float:
        return round((time.monotonic() - began) * 1000, 2)

    def apply_all(snap: Snapshot) -> dict[str, str]:
        """Rehearse and prepare the live install: acknowledged only once both are done,
        so the supervisor never starts the takeover before the client is ready for it.
        The live plan is made in a thread beside the rehearsal, which mostly waits on its
        vswitchd and ovs-ofctl (200k rules: seconds of the client phase)."""
        digests = snap.digests()
        stages = {"received": since()}  # ms since the client started, for the record
        with ThreadPoolExecutor(1, thread_name_prefix="live-plan") as pool:
            live = pool.submit(Restorer(args.rundir, args.db).plan, snap, encode=True,
                               defer_window=args.ct_defer_window)
            if args.validate:
                # A short path: unixctl socket paths must fit in sun_path (108 bytes).
                rehearsal = (Path(tempfile.gettempdir())
                             / f"{REHEARSAL_PREFIX}{secrets.token_hex(6)}")
                # Named in the work directory before it exists: whoever ends the upgrade
                # (the runner, or a recovering supervisor) removes it even if this
                # process is killed.
                (Path(args.workdir) / REHEARSAL_FILE).write_text(f"{rehearsal}\n")
                rehearsal.mkdir(mode=0o700)
                error = ""
                try:
                    digests = rehearse(snap, args.vswitchd, args.db, rehearsal)
                except OvsnduError as exc:
                    error = str(exc)
                    raise
                finally:
                    keep_rehearsal_log(rehearsal / "run", Path(args.workdir), error)
                    shutil.rmtree(rehearsal, ignore_errors=True)
                stages["rehearsed"] = since()
            plans.append(live.result())
        stages["planned"] = since()
        # What is left now lives until the install: collected once here and frozen, so
        # that no collection of the whole heap (tens of ms with 50k rules) runs in the
        # handover gap (measured: docs/performance.md).
        gc.collect()
        gc.freeze()
        say("prepared " + json.dumps({**stages, "collected": since()}))
        return digests

    try:
        # The supervisor starts listening right after starting us: give it a moment.
        deadline = time.monotonic() + 10
        while not Path(args.socket).exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        result = await receive_state(args.socket, token, apply_all=apply_all,
                                     expected_uid=0 if args.root_server else None)
        session = result.session
        async with session:
            await session.wait_handover(timeout=args.timeout)
            gc.disable()  # no collection pause between the takeover and the lift
            try:
                lifted = await asyncio.to_thread(
                    install_live, plans[0], Path(args.rundir), args.db,
                    tcp_seq_check=args.tcp_seq_check,
                    of_dir=Path(args.of_dir) if args.of_dir else None,
                    catchup=Path(args.workdir) / CATCHUP_FILE)
            finally:
                gc.enable()
            say(f"installed; flow-restore-wait lifted after {lifted * 1000:.0f} ms")
            await session.ready()
            await session.wait_commit(timeout=args.timeout)
    except SyncAborted as exc:
        say(f"ovsndu client: aborted: {exc}")
        return EXIT_ABORTED
    except OvsnduError as exc:
        say(f"ovsndu client: error: {exc}")
        return EXIT_ERROR
    return EXIT_COMMITTED


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The client's command line (set by the supervisor)."""
    p = argparse.ArgumentParser(prog="ovsndu-client")
    p.add_argument("--socket", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--rundir", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--vswitchd", required=True, help="the new binary")
    p.add_argument("--of-dir", help="where the new vswitchd's OpenFlow sockets are until "
                   "the supervisor publishes them (default: the rundir)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--tcp-seq-check", action="store_true")
    p.add_argument("--ct-defer-window", type=float, default=HOT_WINDOW_S,
                   help="conntrack entries idle this long (s) are replayed after forwarding "
                   "resumed (ovsndu.ovs.ct_defer)")
    p.add_argument("--root-server", action="store_true", help="the server must run as root")
    p.add_argument("--timeout", type=float, default=120.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    return asyncio.run(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
