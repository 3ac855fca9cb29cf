"""The rehearsal replays conntrack as one entry of each kind (ovsndu.model.ct_kinds), into
a real vswitchd: a new binary that refuses one kind of entry still fails the rehearsal,
however many entries of other kinds come first.

The refusing binary is the real one with a conntrack zone limit of 0 on one zone
(``dpctl/ct-set-limits``, set in the rehearsal's vswitchd before its install): it
commits no connection in that zone, whatever else the entry holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ovsndu.errors import RestoreError
from ovsndu.model import Conntrack, Snapshot
from ovsndu.model.ct_kinds import kind
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.restore import RestorePlan, Restorer, RestoreReport
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.ovs.unixctl import Unixctl
from ovsndu.upgrade.client import rehearsal_state, rehearse
from tests.conftest import require_ovs

REFUSED_ZONE = 7


def _entries(n: int) -> list[Conntrack]:
    """*n* UDP and ESTABLISHED TCP entries in zones 0-3, then one UDP entry in REFUSED_ZONE."""
    out = []
    for i in range(n):
        src = f"10.8.{i >> 8 & 0xFF}.{i & 0xFF}"
        if i % 2:
            out.append(Conntrack(protocol="tcp", orig=f"src={src},dst=10.9.0.1,sport=40000,"
                                 "dport=443", reply=f"src=10.9.0.1,dst={src},sport=443,"
                                 "dport=40000", zone=i // 2 % 4, state_orig="ESTABLISHED",
                                 state_reply="ESTABLISHED"))
        else:
            out.append(Conntrack(protocol="udp", orig=f"src={src},dst=10.9.0.1,sport=1024,"
                                 "dport=53", reply=f"src=10.9.0.1,dst={src},sport=53,"
                                 "dport=1024", zone=i // 2 % 4))
    out.append(Conntrack(protocol="udp", orig="src=10.7.0.1,dst=10.9.0.1,sport=1024,dport=53",
                         reply="src=10.9.0.1,dst=10.7.0.1,sport=53,dport=1024",
                         zone=REFUSED_ZONE))
    return out


@pytest.fixture(name="live")
def _live() -> Any:
    require_ovs()
    with Sandbox() as sb:
        sb.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev",
                 "--", "add-port", "br0", "p1", "--", "set", "interface", "p1",
                 "type=dummy", "ofport_request=1")
        sb.ofctl("br0", "add-flow", "priority=0,actions=NORMAL")
        yield sb


def _snapshot(sb: Sandbox, n: int) -> Snapshot:
    return read_snapshot(sb.rundir, sb.db).replace("conntrack", _entries(n))


def test_rehearsal_replays_each_kind_once(live: Sandbox, tmp_path: Path) -> None:
    snap = _snapshot(live, 400)
    rehearsed = rehearsal_state(snap).categories["conntrack"]
    # 2 protocols × 4 zones, and the one entry of the refused zone.
    assert len(rehearsed) == 9
    assert {kind(e) for e in rehearsed} == {kind(e) for e in snap.categories["conntrack"]
                                            if isinstance(e, Conntrack)}
    assert rehearse(snap, "ovs-vswitchd", live.db, tmp_path / "r") == snap.digests()


def test_a_binary_refusing_one_kind_fails_the_rehearsal(live: Sandbox, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    apply = Restorer.apply

    def refusing(self: Restorer, plan: RestorePlan, **kw: Any) -> RestoreReport:
        with Unixctl.for_daemon(self.rundir, pid=self.pid) as appctl:
            appctl("dpctl/ct-set-limits", f"zone={REFUSED_ZONE},limit=0")
        return apply(self, plan, **kw)

    monkeypatch.setattr(Restorer, "apply", refusing)
    snap = _snapshot(live, 400)
    with pytest.raises(RestoreError) as err:
        rehearse(snap, "ovs-vswitchd", live.db, tmp_path / "r")
    assert err.value.category == "conntrack"
    assert f"zone={REFUSED_ZONE}" in str(err.value) or "10.7.0.1" in str(err.value)
    # Without the refused kind, the same binary passes: the failure was that kind's.
    ok = snap.replace("conntrack", _entries(400)[:-1])
    assert rehearse(ok, "ovs-vswitchd", live.db, tmp_path / "r2") == ok.digests()
