"""A switch that keeps changing: controller writes during the upgrade, and who may write when.

A writer (``ovs-ofctl`` on the bridge's management socket, as an operator or a
management-socket controller connects) adds flows, groups and meters all through a
reload; every write the switch acknowledged must be in the table afterwards, and
nobody must ever see the new process with a partly restored table.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from ovsndu.ovs.ovsdb import Ovsdb
from tests.upgrade.conftest import Rig


class Writer(threading.Thread):
    """Adds a flow (and every 5th time a group and a meter) to br0 until stopped."""

    def __init__(self, rundir: Path):
        super().__init__(daemon=True)
        self.target = f"unix:{rundir}/br0.mgmt"
        self.stop = threading.Event()
        self.acked: dict[str, list[tuple[int, float]]] = {"flow": [], "group": [], "meter": [],
                                                          "bytes": []}
        self.tables: list[int] = []  # flow counts of full dumps seen meanwhile

    def _ofctl(self, *args: str) -> bool:
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", args[0], self.target, *args[1:]],
                           capture_output=True, text=True, check=False, timeout=10)
        return r.returncode == 0

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            if self._ofctl("add-flow", f"table=3,priority={n},cookie=0xc0ffee,udp,"
                                       f"tp_dst={n},actions=drop"):
                self.acked["flow"].append((n, time.monotonic()))
            if n % 3 == 0 and subprocess.run(
                    ["ovs-ofctl", "-O", "OpenFlow10", "add-flow", self.target,
                     f"table=5,priority={n},mpls,actions=load:{n}->OXM_OF_MPLS_LABEL[0..19]"],
                    capture_output=True, check=False, timeout=10).returncode == 0:
                # OVS prints it as set_field:N/0xfffff->mpls_label, which its own parser
                # refuses: only carrying the rule as bytes keeps it (issue 10, defect 5).
                self.acked["bytes"].append((n, time.monotonic()))
            if n % 5 == 0:
                gid = 1000 + n
                # Printed as set_field:N/0xfffff->mpls_label: only its bytes carry it.
                if self._ofctl("add-group", f"group_id={gid},type=all,bucket=actions="
                                            f"load:{n}->OXM_OF_MPLS_LABEL[0..19]"):
                    self.acked["group"].append((gid, time.monotonic()))
                mid = 100 + n
                if self._ofctl("add-meter", f"meter={mid},kbps,bands=type=drop,rate={mid}"):
                    self.acked["meter"].append((mid, time.monotonic()))
            r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", self.target,
                                "table=0"], capture_output=True, text=True, check=False)
            if r.returncode == 0:
                self.tables.append(sum(1 for ln in r.stdout.splitlines() if "actions=" in ln))


def test_controller_writes_during_reload_are_kept(rig: Rig) -> None:
    """Every acknowledged write survives; the table is never seen half restored."""
    table0 = sum(1 for ln in rig.sb.ofctl("br0", "dump-flows", "table=0").splitlines()
                 if "actions=" in ln)
    writer = Writer(rig.sb.rundir)
    writer.start()
    time.sleep(0.3)
    code, result = rig.reload()
    time.sleep(0.3)
    writer.stop.set()
    writer.join(30)
    assert code == 0, result
    flows = rig.sb.ofctl("br0", "dump-flows", "table=3", version="OpenFlow13")
    groups = rig.sb.ofctl("br0", "dump-groups", version="OpenFlow13")
    meters = rig.sb.ofctl("br0", "dump-meters", version="OpenFlow13")
    lost_flows = [n for n, _t in writer.acked["flow"] if f"tp_dst={n} " not in flows + " "
                  and f"tp_dst={n}," not in flows]
    lost_groups = [g for g, _t in writer.acked["group"] if f"group_id={g}," not in groups]
    lost_meters = [m for m, _t in writer.acked["meter"] if f"meter={m} " not in meters]
    table5 = rig.sb.ofctl("br0", "dump-flows", "table=5", version="OpenFlow15")
    lost_bytes = [n for n, _t in writer.acked["bytes"]
                  if f"priority={n},mpls actions=set_field:{n}/0xfffff->mpls_label" not in table5]
    assert len(writer.acked["flow"]) > 10, writer.acked
    assert writer.acked["bytes"], writer.acked
    assert (lost_flows, lost_groups, lost_meters, lost_bytes) == ([], [], [], [])
    # Writes reached the old process after the snapshot and were carried by the catch-up.
    marks = result["record"]["marks"]
    assert marks.get("catchup.flows.added", 0) > 0, marks
    # Whoever could dump br0 saw the whole restored table 0, never an empty or partial one.
    assert writer.tables and min(writer.tables) >= table0, (table0, writer.tables)


def test_flow_restore_wait_of_someone_else_is_left_alone(rig: Rig) -> None:
    """A restart script's flow-restore-wait is theirs: reload refuses and lifts nothing."""
    rig.sb.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
    code, result = rig.reload()
    assert code == 2, result
    assert "flow-restore-wait" in result["reason"]
    with Ovsdb(rig.sb.db) as db:
        assert db.flow_restore_wait() == (True, False)
    rig.sb.vsctl("remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")
    code, result = rig.reload()
    assert code == 0, result
    with Ovsdb(rig.sb.db) as db:
        assert db.flow_restore_wait() == (False, False)


def test_controller_table_bridge_is_read_back_before_its_controllers_connect(rig: Rig) -> None:
    """br0 has a Controller-table controller (a passive one nobody uses): it is served only
    once flow-restore-wait is lifted, so its OpenFlow state is proven before the lift."""
    rig.sb.vsctl("set-controller", "br0", "ptcp:0:127.0.0.1")
    before = rig.sb.ofctl("br0", "dump-flows", options=("--no-stats",), version="OpenFlow13")
    code, result = rig.reload()
    assert code == 0, result
    assert any("read back before flow-restore-wait was lifted" in a
               for a in result["record"]["anomalies"]), result["record"]["anomalies"]
    after = rig.sb.ofctl("br0", "dump-flows", options=("--no-stats",), version="OpenFlow13")
    assert sorted(after.splitlines()) == sorted(before.splitlines())  # --no-stats: no header
