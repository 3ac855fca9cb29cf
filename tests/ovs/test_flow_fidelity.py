"""``ovsndu restore`` keeps ~1,000 rules over OVS's match fields and actions, added over
OpenFlow 1.0, 1.3 and 1.5, with groups of every type, meters and a TLV map — identical
in the raw output of ``ovs-ofctl`` (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovsndu.ovs.readers import read_snapshot
from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.flow_corpus import BRIDGE, keywords, populate_flows, raw_openflow
from tests.conftest import require_ovs


@pytest.fixture(name="corpus", scope="module")
def _corpus() -> Iterator[tuple[Sandbox, list[str]]]:
    require_ovs()
    with Sandbox() as sb:
        added, _refused = populate_flows(sb)
        yield sb, [r.text for r in added]


def test_corpus_covers_the_surface(corpus: tuple[Sandbox, list[str]]) -> None:
    sb, texts = corpus
    from ovsndu.testing.flow_corpus import Rule
    assert len(texts) >= 1000
    assert len(keywords([Rule("", t) for t in texts])) >= 100
    raw = raw_openflow(sb)
    assert len(raw["flows"]) >= 1000
    assert {g.split(",")[1] for g in raw["groups"]} >= {"type=all", "type=select",
                                                       "type=indirect", "type=ff"}


def test_restore_keeps_every_rule(corpus: tuple[Sandbox, list[str]], tmp_path: Path) -> None:
    sb, _ = corpus
    before = raw_openflow(sb)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(read_snapshot(sb.rundir, sb.db).to_dict()))
    with Sandbox(tmp_path / "run", db_file=sb.copy_db(tmp_path / "conf.db")) as target:
        r = subprocess.run([sys.executable, "-m", "ovsndu", "restore", str(path), "--rundir",
                            str(target.rundir)], capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        after = raw_openflow(target, BRIDGE)
    for name in before:
        lost = sorted(set(before[name]) - set(after[name]))
        extra = sorted(set(after[name]) - set(before[name]))
        assert (lost, extra) == ([], []), name
