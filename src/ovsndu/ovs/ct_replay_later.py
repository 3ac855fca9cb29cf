"""The deferred conntrack replay, sent once forwarding has resumed, and its repair.

:mod:`ovsndu.ovs.ct_defer` decides which entries wait (pure); :func:`replay_deferred`
sends them one message at a time (forwarding goes on in between), reads the table
back zone by zone and replays again the entries traffic met first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from ovsndu.errors import RestoreError, VswitchdError
from ovsndu.ovs import appctl_parsers
from ovsndu.ovs.ct_defer import flush_tuple, misjudged
from ovsndu.ovs.paced import send_unbundled
from ovsndu.ovs.replay import conntrack_lines
from ovsndu.ovs.restore_plan import RestorePlan
from ovsndu.ovs.restore_plan import reason_of as _reason
from ovsndu.ovs.unixctl import Unixctl


def replay_deferred(plan: RestorePlan, appctl: Unixctl, of_dir: Path,
                    send: Callable[[list[str], str], None]) -> dict[str, int]:
    """Replay the deferred conntrack entries (forwarding has resumed), then repair the
    ones traffic met first (:mod:`ovsndu.ovs.ct_defer`): read the table, flush and
    replay again every deferred entry missing or with another reply tuple or NAT.
    Returns ``{"deferred": N, "repaired": M}``; RestoreError when a repair fails."""
    for chunk in plan.ct_later_chunks:
        encoded = plan.ct_encoded.get(id(chunk))
        assert plan.ct_bridge is not None
        if encoded is None:  # before OpenFlow 1.4: ovs-ofctl, one bundle a chunk
            send([p.line() for p in chunk], "the replay")
            continue
        try:  # one message at a time: forwarding goes on in between (ovs/paced.py)
            send_unbundled(of_dir / f"{plan.ct_bridge}.mgmt", encoded)
        except VswitchdError as exc:
            raise RestoreError("conntrack", f"{plan.ct_bridge} rejected the deferred "
                               f"replay: {_reason(exc)}") from None
    # Zone by zone: each dump holds vswitchd's main thread (which polls the non-PMD
    # ports) only for that zone's entries, not for the whole table at once.  Without
    # -m/-s: the repair needs the tuples only, and the flags' text is ~40 % of a zone's
    # hold (12.5k entries: 35 ms with them, 21 ms without; docs/performance.md).
    dp = _datapath_of(appctl, plan)
    found = [e for zone in sorted({e.zone for e in plan.ct_later})
             for e in appctl_parsers.parse_conntrack(appctl("dpctl/dump-conntrack", *dp,
                                                            f"zone={zone}"))]
    wrong = misjudged(plan.ct_later, found)
    for e in wrong:
        for direction in ("orig", "reply"):
            with contextlib.suppress(VswitchdError):
                appctl("dpctl/flush-conntrack", *dp, f"zone={e.zone}",
                       flush_tuple(e, direction))
    if wrong:
        assert plan.ct_bridge is not None
        lines = conntrack_lines(wrong)
        send(lines, "the repair replay")
    return {"deferred": len(plan.ct_later), "repaired": len(wrong)}


def _datapath_of(appctl: Unixctl, plan: RestorePlan) -> tuple[str, ...]:
    """The datapath argument for dpctl commands about the conntrack bridge: none with
    one datapath; its ``TYPE@ovs-TYPE`` with several (dpctl refuses to guess)."""
    names = appctl("dpctl/dump-dps").split()
    if len(names) < 2:
        return ()
    dp_type = next(b.datapath_type for b in plan.bridges if b.name == plan.ct_bridge)
    return tuple(n for n in names if n.endswith(f"@ovs-{dp_type}"))[:1]
