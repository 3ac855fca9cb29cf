"""Conntrack read zone by zone (ovsndu.ovs.ct_read) against a real vswitchd holding the
conntrack corpus (many zones, SNAT, DNAT, ALG, IPv6): the same entries as one full dump;
a zone nobody knew makes it fall back to a full dump, nothing missed; expired entries
not yet swept are not taken for one; a read without details still verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovsndu.errors import RestoreError
from ovsndu.model import Conntrack, Flow
from ovsndu.ovs import ct_read
from ovsndu.ovs.appctl_parsers import parse_conntrack
from ovsndu.ovs.ct_defer import flush_tuple
from ovsndu.ovs.packets import frame
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import Sandbox, wait_for
from ovsndu.ovs.unixctl import Unixctl
from ovsndu.ovs.verify import verify_readback
from ovsndu.testing.state_corpus import populate_conntrack

DP = "netdev@ovs-netdev"


def _key(e: Conntrack) -> tuple[object, ...]:
    return (e.zone, e.protocol, e.orig, e.reply, e.mark, e.labels, e.state_orig,
            e.state_reply)


def _raw(sb: Sandbox) -> set[tuple[object, ...]]:
    return {_key(e) for e in parse_conntrack(sb.appctl("dpctl/dump-conntrack", "-m", "-s"))}


def test_zone_by_zone_equals_one_full_dump(sandbox: Sandbox) -> None:
    sb = sandbox
    populate_conntrack(sb)
    with Unixctl.for_daemon(sb.rundir) as appctl:
        ct_read.forget_zones()  # as in a fresh process
        first = ct_read.read_conntrack(appctl, DP)
        assert ct_read.LAST[(appctl.pid, DP)]["full_dump"] == 1  # no zone known yet
        zones = {e.zone for e in first if isinstance(e, Conntrack)}
        assert len(zones) >= 5
        second = ct_read.read_conntrack(appctl, DP)
        assert ct_read.LAST[(appctl.pid, DP)] == {"entries": len(first), "zones": len(zones),
                                                  "full_dump": 0}
        assert {_key(e) for e in second if isinstance(e, Conntrack)} == _raw(sb)
        assert len(second) == len(first)

        # An entry in a zone no read has seen: the zones do not add up, one full dump.
        pkt = frame(src_ip="10.77.0.1", dst_ip="10.77.0.2", proto="udp", sport=1, dport=2)
        sb.ofctl("brc", "packet-out", f"in_port=controller packet={pkt.hex()} "
                 "actions=ct(commit,zone=4321)")
        third = ct_read.read_conntrack(appctl, DP)
        assert ct_read.LAST[(appctl.pid, DP)]["full_dump"] == 1
        assert {_key(e) for e in third if isinstance(e, Conntrack)} == _raw(sb)
        assert 4321 in ct_read.known_zones(DP)


def test_zones_named_by_flows() -> None:
    """Literal zones of ct() actions; a zone from a register is not one."""
    flows = [Flow(bridge="b", table=0, cookie="0x0", priority=1, match="ip", actions=a)
             for a in ("ct(table=1,zone=7)", "ct(commit,zone=12,nat(src=10.0.0.1)),output:2",
                       "ct(commit,zone=NXM_NX_REG13[0..15],exec(load:0x1->NXM_NX_CT_MARK[]))",
                       "load:0x5->NXM_NX_REG0[],resubmit(,3)", "ct(table=2)")]
    assert ct_read.zones_named(flows) == {7, 12}


def _udp_commits(sb: Sandbox, zone: int, n: int, net: int) -> None:
    for i in range(n):
        pkt = frame(src_ip=f"10.{net}.0.{i + 1}", dst_ip=f"10.{net}.1.1", proto="udp",
                    sport=1000 + i, dport=53)
        sb.ofctl("brc", "packet-out", f"in_port=controller packet={pkt.hex()} "
                 f"actions=ct(commit,zone={zone})")


def test_expired_entries_not_swept_yet_are_no_unknown_zone(sandbox: Sandbox) -> None:
    """OVS 3.1 counts an expired entry in ``ct-get-nconns`` until its sweeper (every 20 s)
    removes it, while a dump no longer shows it.  A table whose connections come and go
    always has some: the zone-by-zone read must not take them for a zone it does not
    know (a full dump: one long hold of forwarding), nor miss anything."""
    sb = sandbox
    if "brc" not in sb.vsctl("list-br").split():
        sb.vsctl("add-br", "brc", "--", "set", "bridge", "brc", "datapath_type=netdev")
    sb.vsctl("--", "--id=@d", "create", "Datapath", "datapath_version=0",
             "--", "set", "Open_vSwitch", ".", "datapaths:netdev=@d")
    sb.vsctl("add-zone-tp", "netdev", "zone=77", "udp_first=1", "udp_single=1",
             "udp_multiple=1")
    _udp_commits(sb, 78, 20, 78)  # lasting entries (the default 30 s and more)
    with Unixctl.for_daemon(sb.rundir) as appctl:
        ct_read.forget_zones()
        for _ in range(3):  # a sweep may fall between the expiry and the read: again
            _udp_commits(sb, 77, 20, 77)  # entries that expire after 1 s
            ct_read.read_conntrack(appctl, DP)  # learns the zones (a full dump)
            wait_for(lambda: ct_read.visible_count(appctl, DP) == 20,  # zone 78's only
                     timeout=5.0, what="zone 77's entries expired")
            got = ct_read.read_conntrack(appctl, DP, zones=[77, 78])
            if ct_read.nconns(appctl, DP) > len(got):  # still not swept: the case
                break
        else:
            raise AssertionError("the sweeper always ran between expiry and read")
        assert ct_read.LAST[(appctl.pid, DP)]["full_dump"] == 0
        assert {_key(e) for e in got if isinstance(e, Conntrack)} == _raw(sb)
        assert {e.zone for e in got if isinstance(e, Conntrack)} >= {78}
        # what the count held beyond the read: expired, not missed (lastread's bound)
        assert 0 < ct_read.unswept(appctl, DP) <= 20 * 3
        # Expired entries beside a zone nobody knew: the read still falls back.
        _udp_commits(sb, 4322, 1, 79)
        ct_read.forget_zones()
        third = ct_read.read_conntrack(appctl, DP, zones=[77, 78])
        assert ct_read.LAST[(appctl.pid, DP)]["full_dump"] == 1
        assert {_key(e) for e in third if isinstance(e, Conntrack)} == _raw(sb)
        assert 4322 in ct_read.known_zones(DP)


def test_verification_without_details_still_finds_a_lost_entry(sandbox: Sandbox) -> None:
    """The handover's verification reads conntrack back without ``-m -s`` (shorter holds
    of forwarding): the rule (presence, reply tuple, NAT) passes on the same table and
    still names an entry the target lost."""
    sb = sandbox
    populate_conntrack(sb)
    snap = read_snapshot(sb.rundir, sb.db)
    want = [e for e in snap.categories["conntrack"] if isinstance(e, Conntrack)]
    assert any(e.timeout is not None for e in want)  # the snapshot has the details
    after = verify_readback(snap, Path(sb.rundir), sb.db, ct_detail=False)
    got = [e for e in after.categories["conntrack"] if isinstance(e, Conntrack)]
    assert got and all(e.timeout is None for e in got)  # read without them
    lost = next(e for e in want if e.protocol == "udp" and not e.nat and not e.helper)
    sb.appctl("dpctl/flush-conntrack", f"zone={lost.zone}", flush_tuple(lost))
    with pytest.raises(RestoreError, match="conntrack"):
        verify_readback(snap, Path(sb.rundir), sb.db, ct_detail=False)
