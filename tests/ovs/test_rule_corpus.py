"""Fidelity of OpenFlow rules, groups and meters on a second corpus, judged by OVS's own
tools (issue 10).

Sandbox A holds the rule corpus (``ovsndu.testing.rule_corpus``: ~1,100 rules over
100+ match fields and actions, added over OpenFlow 1.0, 1.3 and 1.5; groups of every
type and property; numbered meters).  ``ovsndu restore`` of A's snapshot file into a
fresh vswitchd B (on a copy of A's database) must leave B's raw ``ovs-ofctl``
output — ``dump-flows --no-stats`` over OpenFlow 1.5, ``dump-groups``,
``dump-meters`` — equal to A's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing import rule_corpus as flow_corpus
from tests.conftest import require_ovs


def raw(sb: Sandbox) -> dict[str, list[str]]:
    return {
        "flows": flow_corpus.raw_flows(sb),
        "groups": flow_corpus.raw_groups(sb),
        "meters": flow_corpus.raw_meters(sb),
    }


@pytest.fixture(name="corpus", scope="module")
def _corpus() -> Iterator[Sandbox]:
    require_ovs()
    with Sandbox() as sb:
        flow_corpus.install(sb)
        yield sb


@pytest.fixture(name="restored", scope="module")
def _restored(corpus: Sandbox, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[dict[str, list[str]], Sandbox,
                                  subprocess.CompletedProcess[str]]]:
    tmp = tmp_path_factory.mktemp("rule-corpus")
    before = raw(corpus)
    path = tmp / "a.json"
    path.write_text(json.dumps(read_snapshot(corpus.rundir, corpus.db).to_dict()))
    with Sandbox(tmp / "run", db_file=corpus.copy_db(tmp / "conf.db")) as target:
        r = subprocess.run([sys.executable, "-m", "ovsndu", "restore", str(path), "--rundir",
                            str(target.rundir)], capture_output=True, text=True, check=False)
        yield before, target, r


def test_corpus_covers_the_surface(corpus: Sandbox) -> None:
    """≥ 1,000 rules, ≥ 100 distinct match fields and actions, tables 0-253, priorities
    0 and 65535, every group type, the rules that broke the text round trip."""
    flows = flow_corpus.raw_flows(corpus)
    assert len(flows) >= 1000
    words: set[str] = set()
    for line in flows:
        match, _, actions = line.partition(" actions=")
        words |= {w.split("=")[0] for w in re.split(r"[ ,]", match) if w}
        words |= set(re.findall(r"(?:^|[,(])([a-z_0-9]+)(?=[:(,]|$)", actions))
    assert len(words) >= 100, sorted(words)
    tables = {int(m.group(1)) if m else 0 for m in (re.search(r"table=(\d+)", line)
                                                     for line in flows)}
    assert {0, 1, 200, 250, 253} <= tables
    text = "\n".join(flows)
    for needle in ("priority=0,", "priority=65535", "importance=", "send_flow_rem",
                   "reset_counts", "no_packet_counts", "no_byte_counts", "idle_timeout=",
                   "hard_timeout=", "cookie=", "learn(", "conjunction(", "nat(", "exec(",
                   "alg=ftp", "clone(", "check_pkt_larger(", "resubmit(", "note:", "bundle(",
                   "multipath(", "set_queue:", "push_vlan:", "pop_mpls:",
                   "push_mpls:", "encap(nsh", "decap(", "dec_ttl(1,2,3)", "sample(",
                   "meter:", "group:", "goto_table:", "write_metadata:", "tun_metadata2=",
                   "ipv6_src=", "arp_tha=", "nd_target=", "ct_nw_src=", "ct_state=",
                   "set_field:10/0xfffff->mpls_label", "set_field:1/0x3->nw_ecn",
                   "gtpu_flags="):
        assert needle in text, needle
    groups = "\n".join(flow_corpus.raw_groups(corpus))
    for kind in ("type=all", "type=select", "type=indirect", "type=ff", "selection_method=hash",
                 "selection_method=dp_hash", "watch_group", "bucket_id:", "weight:"):
        assert kind in groups, kind


def test_restore_keeps_raw_output(
        restored: tuple[dict[str, list[str]], Sandbox, subprocess.CompletedProcess[str]]
) -> None:
    before, target, r = restored
    assert r.returncode == 0, r.stderr
    after = raw(target)
    for name, lines in before.items():
        lost = sorted(set(lines) - set(after[name]))
        extra = sorted(set(after[name]) - set(lines))
        assert (lost, extra) == ([], []), name
        assert after[name] == lines, name
