"""The DPDK build of ovs-vswitchd in the rehearsal: its database copy made safe.

The rehearsal (:func:`ovsndu.upgrade.client.rehearse`) runs the new binary on a copy of
the live database with the dummy datapath.  A copy that says ``dpdk-init=true`` would
make a DPDK build initialise DPDK there (hugepages taken a second time) and open every
``type=dpdk`` interface for real: a ``net_tap`` device would create a tap in the host's
namespace, a ``net_af_packet`` device would attach to the host interface of that name,
and a physical device would be taken from the serving process.  So before the rehearsal
starts, :func:`defuse_copy` turns DPDK off in the copy and makes every DPDK interface a
``dummy`` one (its ``ofport_request`` kept: the rehearsal compares OpenFlow port numbers;
the live install keeps the real interfaces, which the new process opens itself).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ovsndu.errors import VswitchdError

#: Interface types that only the DPDK build opens.
DPDK_TYPES = ("dpdk", "dpdkvhostuser", "dpdkvhostuserclient")


def defuse_copy(db_file: Path) -> None:
    """Rewrite the database *file* (not served by anyone yet) as described above."""
    ops: list[object] = [{"op": "mutate", "table": "Open_vSwitch", "where": [],
                          "mutations": [["other_config", "delete", ["set", ["dpdk-init"]]]]}]
    ops += [{"op": "update", "table": "Interface", "where": [["type", "==", kind]],
             "row": {"type": "dummy", "options": ["map", []]}} for kind in DPDK_TYPES]
    proc = subprocess.run(["ovsdb-tool", "transact", str(db_file),
                           json.dumps(["Open_vSwitch", *ops])],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0 or '"error"' in proc.stdout:
        raise VswitchdError("cannot prepare the rehearsal's database copy: "
                            + (proc.stderr.strip() or proc.stdout.strip())[:300])
