"""`ovsndu snapshot` against a real vswitchd holding the sample state in every category."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ovsndu.model import CATEGORIES, Snapshot
from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import Sandbox

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def ovsndu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ovsndu", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(name="snap", scope="module")
def _snap(populated: Sandbox) -> Snapshot:
    return read_snapshot(populated.rundir, populated.db)


class TestSampleStateIsReadExactly:
    def test_ports(self, snap: Snapshot) -> None:
        """Every interface with its type and OpenFlow number; MACs and datapath numbers read."""
        got = {(p.bridge, p.port, p.interface, p.type, p.ofport) for p in snap.categories["ports"]}
        assert got == {
            ("br0", "br0", "br0", "internal", 65534),
            ("br0", "p1", "p1", "dummy", 1),
            ("br0", "p2", "p2", "dummy", 2),
            ("br0", "p3", "p3", "dummy", 3),
            ("br0", "gnv0", "gnv0", "geneve", 10),
            ("br1", "br1", "br1", "internal", 65534),
            ("br1", "p4", "p4", "dummy", 4),
        }
        for p in snap.categories["ports"]:
            assert p.mac is not None
            assert MAC_RE.match(p.mac)
            assert isinstance(p.dp_port, int)

    def test_flows_every_table(self, snap: Snapshot) -> None:
        """Flows of three tables on br0 and two on br1 (read with OpenFlow 1.3 there)."""
        flows = snap.categories["flows"]
        assert len(flows) == 14
        assert {(f.bridge, f.table) for f in flows} == {
            ("br0", 0),
            ("br0", 1),
            ("br0", 2),
            ("br1", 0),
            ("br1", 1),
        }
        (rich,) = [f for f in flows if f.cookie == "0xfeed"]
        assert (rich.table, rich.priority, rich.match, rich.actions) == (
            2,
            20,
            "ip,nw_src=10.99.0.1",
            "drop",
        )
        assert (rich.idle_timeout, rich.hard_timeout, rich.importance, rich.flags) == (
            600,
            3600,
            7,
            ("send_flow_rem",),
        )
        tcp = [f for f in flows if f.match == "tcp,in_port=1"]
        assert tcp[0].actions == (
            "ct(commit,zone=7,exec(set_field:0x2a->ct_mark,set_field:0x1234->ct_label)),output:2"
        )
        assert tcp[0].n_packets == 2  # the SYN and the ACK went through it
        assert any(f.match == "tun_metadata0=0x1234" for f in flows)

    def test_groups_meters_tlv(self, snap: Snapshot) -> None:
        """select and all groups, meters with bands on both bridges, TLV mappings."""
        groups = {g.group_id: g for g in snap.categories["groups"]}
        assert (groups[1].type, groups[1].selection_method) == ("select", "hash")
        assert groups[1].buckets == (
            "bucket_id:0,weight:10,actions=output:1",
            "bucket_id:1,weight:20,actions=output:2",
        )
        assert groups[2].type == "all"
        assert len(groups[2].buckets) == 2
        meters = {(m.bridge, m.meter_id): m for m in snap.categories["meters"]}
        assert set(meters) == {("br0", 1), ("br0", 2), ("br1", 5)}
        assert meters["br0", 1].bands == ("type=drop rate=1000 burst_size=100",)
        assert meters["br0", 1].flags == ("pktps", "burst", "stats")
        tlv = {
            (t.tlv_class, t.tlv_type, t.length, t.index) for t in snap.categories["tlv_mappings"]
        }
        assert tlv == {("0xffff", 0x80, 4, 0), ("0x102", 1, 8, 1)}

    def test_conntrack(self, snap: Snapshot) -> None:
        """Entries made by real frames: zone, mark, label, TCP state, NAT, ICMP."""
        ct = {c.protocol: c for c in snap.categories["conntrack"]}
        assert set(ct) == {"tcp", "udp", "icmp"}
        tcp = ct["tcp"]
        assert (tcp.zone, tcp.mark, tcp.labels, tcp.state_orig) == (7, 42, "0x1234", "ESTABLISHED")
        assert tcp.orig == "src=10.0.0.1,dst=10.0.0.2,sport=40000,dport=80"
        assert (ct["udp"].zone, ct["udp"].nat) == (9, "src=10.9.9.9:4000")
        assert ct["udp"].reply == "src=10.0.0.2,dst=10.9.9.9,sport=53,dport=4000"
        assert (ct["icmp"].zone, ct["icmp"].mark) == (5, 1)
        assert all(c.timeout is not None and c.timeout > 0 for c in ct.values())

    def test_fdb_routes_neighbours(self, snap: Snapshot) -> None:
        """Learned (dynamic, incl. VLAN 10) and static MACs, user routes, tunnel neighbours."""
        fdb = {(e.bridge, e.port, e.vlan, e.mac, e.static) for e in snap.categories["fdb"]}
        assert fdb == {
            ("br0", "1", 0, "50:54:00:00:00:11", False),
            ("br0", "2", 0, "50:54:00:00:00:21", False),
            ("br0", "3", 10, "50:54:00:00:00:31", False),
            ("br0", "2", 0, "50:54:00:00:00:99", True),
            ("br1", "4", 0, "50:54:00:00:00:41", False),
        }
        routes = {
            (r.kind, r.prefix, r.dev, r.gateway, r.pkt_mark) for r in snap.categories["routes"]
        }
        assert routes == {
            ("user", "10.5.0.0/16", "br0", "192.168.1.254", 0),
            ("user", "10.6.0.0/16", "br0", "192.168.1.253", 7),
        }
        neigh = {(n.bridge, n.ip, n.mac) for n in snap.categories["tunnel_neighbors"]}
        assert neigh == {
            ("br0", "192.168.1.2", "aa:bb:cc:dd:ee:02"),
            ("br0", "192.168.1.3", "aa:bb:cc:dd:ee:03"),
        }

    def test_read_twice_same_digests(self, populated: Sandbox, snap: Snapshot) -> None:
        """Reading the same state again gives identical digests."""
        assert read_snapshot(populated.rundir, populated.db).digests() == snap.digests()


def test_flow_group_meter_tlv_text_round_trips(snap: Snapshot, sandbox: Sandbox) -> None:
    """What is read installs again verbatim into another vswitchd and reads back equal."""
    sandbox.vsctl(
        "add-br",
        "br0",
        "--",
        "set",
        "bridge",
        "br0",
        "datapath_type=netdev",
        "--",
        "add-br",
        "br1",
        "--",
        "set",
        "bridge",
        "br1",
        "protocols=OpenFlow10,OpenFlow13",
    )
    for name in ("p1", "p2", "p3", "gnv0", "p4"):
        bridge = "br1" if name == "p4" else "br0"
        sandbox.vsctl("add-port", bridge, name, "--", "set", "interface", name, "type=dummy")
    for bridge, version in (("br0", "OpenFlow15"), ("br1", "OpenFlow13")):
        mine = [e for e in snap.categories["tlv_mappings"] if e.bridge == bridge]
        if mine:
            sandbox.ofctl(bridge, "add-tlv-map", ",".join(t.spec() for t in mine))
        for m in snap.categories["meters"]:
            if m.bridge == bridge:
                sandbox.ofctl(bridge, "add-meter", m.spec(), version="OpenFlow13")
        groups = [g.spec() for g in snap.categories["groups"] if g.bridge == bridge]
        if groups:
            sandbox.ofctl(bridge, "add-groups", "-", input_text="\n".join(groups) + "\n")
        flows = [f.spec() for f in snap.categories["flows"] if f.bridge == bridge]
        sandbox.ofctl(
            bridge, "replace-flows", "-", input_text="\n".join(flows) + "\n", version=version
        )
    again = read_snapshot(sandbox.rundir, sandbox.db)
    for name in ("flows", "groups", "meters", "tlv_mappings"):
        assert again.digest(name) == snap.digest(name), name


class TestCli:
    def test_json_shape_and_diff(self, populated: Sandbox, tmp_path: Path) -> None:
        """snapshot -o writes the documented JSON; diff exits 0 on equal, 1 with a table."""
        a, b = tmp_path / "a.json", tmp_path / "b.json"
        for out in (a, b):
            r = ovsndu(
                "snapshot", "--rundir", str(populated.rundir), "--format", "json", "-o", str(out)
            )
            assert r.returncode == 0, r.stderr
        data = json.loads(a.read_text())
        assert data["format"] == 1
        assert data["vswitchd"]["pid"] == populated.vswitchd_pid
        assert "3.1" in data["vswitchd"]["version"]
        assert list(data["categories"]) == list(CATEGORIES)
        for body in data["categories"].values():
            assert body["count"] == len(body["entries"]) > 0
            assert re.match(r"^[0-9a-f]{64}$", body["digest"])
        assert ovsndu("diff", str(a), str(b)).returncode == 0
        data["categories"]["fdb"]["entries"].pop()
        data["categories"]["fdb"]["count"] -= 1
        del data["categories"]["fdb"]["digest"]
        b.write_text(json.dumps(data))
        r = ovsndu("diff", str(a), str(b))
        assert r.returncode == 1
        assert re.search(r"fdb\s+DIFFERENT\s+0\s+1\s+0", r.stdout)
        assert re.search(r"flows\s+equal", r.stdout)

    def test_table_format(self, populated: Sandbox) -> None:
        """The table names every category with its count."""
        r = ovsndu("snapshot", "--rundir", str(populated.rundir))
        assert r.returncode == 0
        assert re.search(r"^conntrack\s+3\s+[0-9a-f]{16}$", r.stdout, re.M)
        assert re.search(r"^fdb\s+5\s", r.stdout, re.M)


class TestBadInput:
    def _one_line_error(self, r: subprocess.CompletedProcess[str], needle: str) -> None:
        assert r.returncode == 2
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert needle in r.stderr

    def test_unreachable_vswitchd(self, tmp_path: Path) -> None:
        """No vswitchd in the rundir: one line naming the pidfile."""
        self._one_line_error(ovsndu("snapshot", "--rundir", str(tmp_path)), "pidfile")

    def test_dead_pid(self, tmp_path: Path) -> None:
        """A pidfile naming no process: one line naming the missing socket."""
        (tmp_path / "ovs-vswitchd.pid").write_text("999999\n")
        self._one_line_error(ovsndu("snapshot", "--rundir", str(tmp_path)), "not reachable")

    def test_missing_bridge(self, sandbox: Sandbox, tmp_path: Path) -> None:
        """A bridge whose management socket is gone: one line naming the bridge."""
        sandbox.vsctl("add-br", "brx")
        sandbox.mgmt_path("brx").unlink()
        self._one_line_error(ovsndu("snapshot", "--rundir", str(sandbox.rundir)), "brx")

    def test_unreachable_db(self, populated: Sandbox, tmp_path: Path) -> None:
        """A wrong OVSDB socket: one line naming it."""
        r = ovsndu(
            "snapshot", "--rundir", str(populated.rundir), "--db", f"unix:{tmp_path}/nope.sock"
        )
        self._one_line_error(r, "nope.sock")

    def test_malformed_files_for_diff(self, tmp_path: Path) -> None:
        """diff of a non-JSON and of a non-snapshot file: one line each, exit 2."""
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        self._one_line_error(ovsndu("diff", str(bad), str(bad)), "bad.json")
        bad.write_text('{"format": 1, "categories": {"fdb": {"entries": [{"mac": 1}]}}}')
        self._one_line_error(ovsndu("diff", str(bad), str(bad)), "fdb")
