"""What each way of restarting keeps: ovsndu restore, ovsndu reload, upstream's ovs-save.

    .venv/bin/python -m benchmarks.fidelity [--json OUT]

A private sandbox gets the flow corpus (``ovsndu.testing.flow_corpus``: ~1,070 rules
over OpenFlow 1.0/1.3/1.5, groups of every type, meters, a TLV map) and the state
corpus (``ovsndu.testing.state_corpus``: conntrack of every protocol with helpers and
related connections, FDB on VLAN ports and bonds, named meters, TLV edge cases).
Each method then restarts or copies it, and every category is compared in the raw
output of OVS's own tools (flows without counters, conntrack without timeouts and
ids, FDB without ages): per category entries, kept identical, changed (same rule
key, other text), lost, and refused by name (what the method said it could not
carry).  Upstream's method is what Debian's ``ovs-ctl restart`` does: ``ovs-save
save-flows``, flow-restore-wait, restart, run the saved script, lift the wait.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import start_supervisor
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import DUMMY_ARGS, Sandbox
from ovsndu.testing import flow_corpus, state_corpus

OVS_SAVE = "/usr/share/openvswitch/scripts/ovs-save"
_FLOW_KEY = re.compile(r"(table=\d+, )?.*?(priority=\d+)(,\S*)? actions=")


def populate(sb: Sandbox) -> None:
    """Both corpora into *sb*."""
    flow_corpus.populate_flows(sb)
    state_corpus.populate_conntrack(sb)
    state_corpus.populate_fdb(sb)
    state_corpus.populate_openflow_extras(sb)


def raw(sb: Sandbox) -> dict[str, list[str]]:
    """Every category as OVS's tools print it (volatile columns removed), sorted."""
    out: dict[str, list[str]] = {}
    for bridge in (flow_corpus.BRIDGE, state_corpus.BRIDGE):
        for name, lines in flow_corpus.raw_openflow(sb, bridge).items():
            out.setdefault(name, []).extend(f"{bridge}: {line}" for line in lines)
    out["conntrack"] = [re.sub(r",id=\d+", "", line) for dp in sb.appctl("dpctl/dump-dps").split()
                        for line in sb.appctl("dpctl/dump-conntrack", "-m", dp).splitlines()
                        if line.strip()]
    out["fdb"] = state_corpus.raw_fdb(sb, state_corpus.VLAN_BRIDGE)
    return {k: sorted(v) for k, v in out.items()}


def _key(category: str, line: str) -> str:
    """Which entry a line describes, for telling a changed entry from a lost one."""
    if category == "flows":
        m = _FLOW_KEY.search(line)
        return "".join(g or "" for g in m.groups()) if m else line
    if category == "groups":
        return line.split(",type=", maxsplit=1)[0]
    if category == "meters":
        return line.split(maxsplit=1)[0] if line else line
    return line


def compare(before: dict[str, list[str]], after: dict[str, list[str]],
            refused: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per category: entries, identical, changed, lost, refused (by name)."""
    report = {}
    for name, lines in before.items():
        want, got = Counter(lines), Counter(after.get(name, []))
        identical = sum((want & got).values())
        missing = want - got
        extra_keys = {_key(name, ln) for ln in (got - want)}
        changed = sum(n for ln, n in missing.items() if _key(name, ln) in extra_keys)
        report[name] = {"entries": len(lines), "identical": identical, "changed": changed,
                        "lost": sum(missing.values()) - changed,
                        "refused": refused.get(name, 0)}
    return report


def by_restore(work: Path) -> dict[str, Any]:
    """``ovsndu restore`` of a snapshot file into a fresh vswitchd on a copy of the DB."""
    with Sandbox(work / "a") as a:
        populate(a)
        before = raw(a)
        snap_file = work / "snapshot.json"
        snap_file.write_text(json.dumps(read_snapshot(a.rundir, a.db).to_dict()))
        db = a.copy_db(work / "b.db")
    with Sandbox(work / "b", db_file=db) as b:
        started = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "ovsndu", "restore", str(snap_file),
                            "--rundir", str(b.rundir)], capture_output=True, text=True,
                           check=False)
        seconds = time.monotonic() - started
        after = raw(b)
    return {"exit_code": r.returncode, "seconds": round(seconds, 2),
            "error": r.stderr.strip()[:300], "categories": compare(before, after, {})}


def by_reload(work: Path) -> dict[str, Any]:
    """``ovsndu reload`` of a supervised sandbox (same binary)."""
    with Sandbox(work / "r") as sb:
        populate(sb)
        before = raw(sb)
        sup, cfg_path = start_supervisor(sb, work, "/usr/sbin/ovs-vswitchd", list(DUMMY_ARGS),
                                         upgrade={"timeout": 300})
        try:
            started = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "ovsndu", "reload", "--config",
                                str(cfg_path), "--json"], capture_output=True, text=True,
                               check=False)
            seconds = time.monotonic() - started
            after = raw(sb)
        finally:
            sup.send_signal(signal.SIGTERM)
            sup.wait(60)
    try:
        record = json.loads(r.stdout).get("record", {})
    except ValueError:
        record = {}
    refused = {k: int(v) for k, v in (record.get("uncarried") or {}).items()}
    return {"exit_code": r.returncode, "seconds": round(seconds, 2),
            "outcome": record.get("outcome"), "reason": record.get("reason"),
            "categories": compare(before, after, refused)}


def by_ovs_save(work: Path) -> dict[str, Any]:
    """Debian's ``ovs-ctl restart`` procedure: ovs-save, flow-restore-wait, restart,
    restore script, wait lifted."""
    with Sandbox(work / "u") as sb:
        populate(sb)
        before = raw(sb)
        env = dict(sb.env)
        bridges = sb.vsctl("list-br").split()
        started = time.monotonic()
        script = subprocess.run(["sh", OVS_SAVE, "save-flows", *bridges], env=env,
                                capture_output=True, text=True, check=True).stdout
        sb.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
        sb.stop_vswitchd()
        sb.start_vswitchd()
        r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                           check=False)
        sb.vsctl("remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")
        seconds = time.monotonic() - started
        time.sleep(0.5)
        after = raw(sb)
    return {"exit_code": r.returncode, "seconds": round(seconds, 2),
            "error": r.stderr.strip()[-300:], "categories": compare(before, after, {})}


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per category, kept/changed/lost/refused per method."""
    methods = list(results)
    head = "| category | entries | " + " | ".join(
        f"{m}: identical / changed / lost / refused" for m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    cats = results[methods[0]]["categories"]
    for name in cats:
        cells = []
        for m in methods:
            c = results[m]["categories"][name]
            cells.append(f"{c['identical']} / {c['changed']} / {c['lost']} / {c['refused']}")
        lines.append(f"| {name} | {cats[name]['entries']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks.fidelity: run as root (it starts OVS daemons)")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ovsndu-fidelity-") as tmp:
        work = Path(tmp)
        for name, method in (("ovsndu restore", by_restore), ("ovsndu reload", by_reload),
                             ("ovs-save", by_ovs_save)):
            (work / name.replace(" ", "-")).mkdir()
            results[name] = method(work / name.replace(" ", "-"))
            print(f"{name}: exit {results[name]['exit_code']}, "
                  f"{results[name]['seconds']} s", flush=True)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
