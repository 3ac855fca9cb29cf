"""A controller holding one OpenFlow connection open through a reload loses no write.

The writer (ovsndu.testing.ofwriter) speaks OpenFlow 1.3 on a single connection to
br0's management socket, as ovn-controller does, and keeps adding, modifying and
deleting flows, groups and meters, each confirmed by a barrier reply, until the old
process stops answering; then it connects again, to the new one.  Every acknowledged
write — including those of the last 500 ms before the old process stopped, and some
after its final read — must be what the new process holds, judged by raw
``ovs-ofctl`` dumps of it.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from ovsndu.testing.ofwriter import OpenWriter, tables
from tests.upgrade.conftest import Rig


def _moments(result: dict[str, Any]) -> tuple[float, float]:
    """(end of the final read, SIGSTOP of the old process), on time.monotonic()."""
    marks = result["record"]["marks"]
    (phase,) = [p for p in result["record"]["phases"] if p["phase"] == "handover"]
    began = (datetime.fromisoformat(phase["started"]).timestamp()
             - (time.time() - time.monotonic()))
    return began + marks["final_read_done"] / 1000, began + marks["old_stopped"] / 1000


def test_open_connection_writes_until_the_stop_are_kept(rig: Rig) -> None:
    """Adds, modifies and deletes of flows, groups and meters on one open connection,
    up to the old process's stop, are all in the new process."""
    writer = OpenWriter(rig.sb.mgmt_path("br0"))
    writer.start()
    time.sleep(0.3)
    code, result = rig.reload()
    time.sleep(0.5)  # the writer connects again, to the new process, and goes on
    writer.stop.set()
    writer.join(30)
    assert code == 0, result
    assert not writer.refused, writer.refused
    marks = result["record"]["marks"]
    have = tables(lambda *a: rig.sb.ofctl("br0", *a, version="OpenFlow13"))
    assert writer.differences(*have) == {"flows": {}, "groups": {}, "meters": {}}, marks
    # The writer kept writing until the old process stopped: writes were acknowledged
    # all through its last 500 ms, and some after the final read ended (carried by the
    # monitors alone).
    read_done, stopped = _moments(result)
    acked = [t for t, _what, _key in writer.acked]
    assert sum(1 for t in acked if stopped - 0.5 <= t <= stopped) >= 20, marks
    assert any(read_done < t <= stopped for t in acked), marks
    assert writer.connections == 2 and any(t > stopped for t in acked), writer.connections
    assert marks.get("catchup.window.flows.put", 0) > 0, marks
    # br1 of the sample allows no OpenFlow 1.5: it alone is read again (and named).
    # The sample's pipeline uses NAT: conntrack was frozen all the same (and named).
    nat, *rest = anomalies = result["record"]["anomalies"]
    assert nat.startswith("new connections' first packets passed without a conntrack "
                          "entry and without NAT during the freeze: "), anomalies
    assert rest == ["not followed, OpenFlow state read again before the stop: "
                    "br1 does not allow OpenFlow 1.5"], anomalies
    kinds = writer.kinds()
    for kind in ("flow add", "flow mod", "flow del", "group add", "group mod", "group del",
                 "meter add", "meter mod", "meter del"):
        assert kinds.get(kind, 0) > 0, kinds
