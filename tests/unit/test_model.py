"""The state model: canonical order, digests, JSON shape, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsndu.errors import ModelError
from ovsndu.model import (
    CATEGORIES,
    ENTRY_TYPES,
    Conntrack,
    Entry,
    FdbEntry,
    Flow,
    Snapshot,
    VswitchdInfo,
    diff_snapshots,
)
from ovsndu.model.validate import check_entry

INFO = VswitchdInfo(pid=1, version="3.1.0")
text = st.text(alphabet="abcdefgh0123456789=,:./", min_size=1, max_size=12)
small = st.integers(min_value=0, max_value=70000)


def _strategy_for(cls: type[Entry]) -> st.SearchStrategy[Entry]:
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = str(f.type)
        if "tuple" in hint:
            kwargs[f.name] = st.lists(text, max_size=3).map(tuple)
        elif "float" in hint:
            kwargs[f.name] = st.none() | st.floats(0, 1e6, allow_nan=False)
        elif hint.startswith("int"):
            kwargs[f.name] = small
        elif "int" in hint:
            kwargs[f.name] = st.none() | small
        elif "bool" in hint:
            kwargs[f.name] = st.booleans()
        elif "None" in hint:
            kwargs[f.name] = st.none() | text
        else:
            kwargs[f.name] = text
    return st.builds(cls, **kwargs)


ENTRIES = {name: _strategy_for(cls) for name, cls in ENTRY_TYPES.items()}
snapshots = st.fixed_dictionaries(
    {name: st.lists(ENTRIES[name], max_size=4) for name in CATEGORIES}
).map(lambda cats: Snapshot.build(INFO, cats))


class TestDigest:
    @given(snapshots, st.randoms())
    @settings(max_examples=200)
    def test_independent_of_order(self, snap: Snapshot, rnd: object) -> None:
        """Rebuilding from shuffled entries gives the same snapshot and digests."""
        cats = {name: list(snap.categories[name]) for name in CATEGORIES}
        for entries in cats.values():
            rnd.shuffle(entries)  # type: ignore[attr-defined]
        again = Snapshot.build(INFO, cats)
        assert again.digests() == snap.digests()
        assert again == snap

    @given(snapshots, st.data())
    @settings(max_examples=300)
    def test_changing_one_entry_changes_only_its_category(
        self, snap: Snapshot, data: st.DataObject
    ) -> None:
        """Replacing one entry by a different one changes that category's digest only."""
        name = data.draw(st.sampled_from(CATEGORIES))
        entries = list(snap.categories[name])
        new = data.draw(ENTRIES[name])
        if entries:
            i = data.draw(st.integers(0, len(entries) - 1))
            if new.canonical() == entries[i].canonical():
                return
            entries[i] = new
        else:
            entries.append(new)
        changed = snap.replace(name, entries)
        for other in CATEGORIES:
            assert (changed.digest(other) == snap.digest(other)) is (other != name)

    @given(st.lists(ENTRIES["flows"], max_size=12), st.lists(st.integers(0, 11), max_size=6),
           st.randoms())
    @settings(max_examples=300)
    def test_order_and_digest_as_sorting_by_identity_then_encoding(
        self, flows: list[Flow], copies: list[int], rnd: object
    ) -> None:
        """The canonical order is (identity, canonical encoding, all fields), and the digest
        hashes the encodings in that order, also with repeated identities and entries
        equal but for volatile fields."""
        for k in copies:  # repeated identities, some with equal encodings
            if flows:
                f = flows[k % len(flows)]
                flows.append(dataclasses.replace(f, n_packets=k, actions=f.actions * (k % 2)))
        rnd.shuffle(flows)  # type: ignore[attr-defined]
        expected = sorted(flows, key=lambda e: (e.identity(), e.canonical(),
                                                json.dumps(e.to_dict(), sort_keys=True,
                                                           default=str)))
        h = hashlib.sha256()
        for e in expected:
            h.update(e.canonical() + b"\n")
        got = Snapshot.build(INFO, {**dict.fromkeys(CATEGORIES, ()), "flows": flows})
        assert list(got.categories["flows"]) == expected
        assert got.digest("flows") == h.hexdigest()

    def test_volatile_fields_stay_out(self) -> None:
        """Counters, durations, ages and timeouts do not change a digest."""
        a = Flow(bridge="br0", table=0, cookie="0x0", priority=1, match="ip", actions="drop",
                 n_packets=1, n_bytes=60, duration=1.5, idle_age=1)
        b = dataclasses.replace(a, n_packets=99, n_bytes=9999, duration=88.0, idle_age=80)
        assert a.canonical() == b.canonical()
        c1 = Conntrack(protocol="udp", orig="src=1.1.1.1", reply="dst=1.1.1.1", timeout=30)
        assert c1.canonical() == dataclasses.replace(c1, timeout=3).canonical()
        f1 = FdbEntry(bridge="br0", port="1", vlan=0, mac="00:00:00:00:00:01", age=3)
        assert f1.canonical() == dataclasses.replace(f1, age=200).canonical()
        assert "n_packets" in a.to_dict()

    def test_entries_differing_only_in_volatile_fields_sort_the_same(self) -> None:
        """Two entries equal but for counters come out in one order, whatever the input."""
        a = Flow(bridge="br0", table=0, cookie="0x0", priority=1, match="ip", actions="drop",
                 n_packets=1)
        b = dataclasses.replace(a, n_packets=2)
        base = Snapshot.build(INFO, dict.fromkeys(CATEGORIES, ()))
        assert base.replace("flows", [a, b]) == base.replace("flows", [b, a])

    def test_volatile_sets_name_real_fields(self) -> None:
        """Every VOLATILE and IDENTITY name is a field of its class."""
        for cls in ENTRY_TYPES.values():
            names = {f.name for f in dataclasses.fields(cls)}
            assert names >= cls.VOLATILE
            assert set(cls.IDENTITY) <= names


class TestJsonShape:
    @given(snapshots, st.integers(min_value=1, max_value=400))
    @settings(max_examples=100)
    def test_json_chunks_are_the_whole_text(self, snap: Snapshot, size: int) -> None:
        """The snapshot file written piece by piece is json.dumps(to_dict()), byte for
        byte, whatever the piece size (crash recovery reads it with from_dict)."""
        assert "".join(snap.json_chunks(size)) == json.dumps(snap.to_dict())

    @given(snapshots)
    @settings(max_examples=100)
    def test_round_trip(self, snap: Snapshot) -> None:
        """to_dict → JSON → from_dict gives the same snapshot, or refuses a value OVS could
        not have printed (the generated text is arbitrary; see test_validate.py)."""
        data = json.loads(json.dumps(snap.to_dict()))
        assert data["format"] == 1
        assert list(data["categories"]) == list(CATEGORIES)
        invalid = []
        for entries in snap.categories.values():
            for e in entries:
                try:
                    check_entry(e)
                except ModelError as exc:
                    invalid.append(str(exc))
        if invalid:
            with pytest.raises(ModelError):
                Snapshot.from_dict(data)
        else:
            assert Snapshot.from_dict(data) == snap

    def test_tampered_digest_is_refused(self) -> None:
        """A stored digest that does not match the entries is an error naming the category."""
        snap = Snapshot.build(INFO, dict.fromkeys(CATEGORIES, ())).replace(
            "fdb", [FdbEntry(bridge="br0", port="1", vlan=0, mac="00:00:00:00:00:01")])
        data = snap.to_dict()
        data["categories"]["fdb"]["entries"][0]["vlan"] = 5
        with pytest.raises(ModelError, match="fdb: stored digest"):
            Snapshot.from_dict(data)

    @pytest.mark.parametrize(("mutate", "message"), [
        (lambda d: d.update(format=2), "format 1"),
        (lambda d: d["categories"].pop("routes"), "missing"),
        (lambda d: d["categories"]["fdb"]["entries"].append({"bridge": "x"}), "fdb"),
        (lambda d: d["categories"]["fdb"]["entries"].append({"vlan": "x"}), "wrong type"),
        (lambda d: d["categories"].update(bogus={"entries": []}), "bogus"),
    ])
    def test_malformed_is_refused(self, mutate: object, message: str) -> None:
        """Malformed snapshots give a ModelError that says what is wrong."""
        data = Snapshot.build(INFO, dict.fromkeys(CATEGORIES, ())).to_dict()
        mutate(data)  # type: ignore[operator]
        with pytest.raises(ModelError, match=message):
            Snapshot.from_dict(data)


class TestDiff:
    def test_added_removed_changed(self) -> None:
        """Identity decides whether a difference is a change or an add/remove pair."""
        base = Snapshot.build(INFO, dict.fromkeys(CATEGORIES, ()))
        e1 = FdbEntry(bridge="br0", port="1", vlan=0, mac="00:00:00:00:00:01")
        e2 = FdbEntry(bridge="br0", port="2", vlan=0, mac="00:00:00:00:00:02")
        a = base.replace("fdb", [e1, e2])
        b = base.replace("fdb", [dataclasses.replace(e1, port="3"),
                                 dataclasses.replace(e2, vlan=7)])
        (fdb,) = [d for d in diff_snapshots(a, b) if not d.equal]
        assert fdb.category == "fdb"
        assert [(x.port, y.port) for x, y in fdb.changed] == [("1", "3")]
        assert fdb.removed == (e2,)
        assert fdb.added[0].vlan == 7


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_canonical_is_the_stock_encoders_output(data: st.DataObject) -> None:
    """The encoder made once (model/state.py) writes what ``json.JSONEncoder`` would, byte
    for byte, for every kind of entry (digests compare across processes and versions)."""
    entry = data.draw(st.one_of(*ENTRIES.values()))
    stock = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    values = [entry.CATEGORY, *(getattr(entry, f.name) for f in dataclasses.fields(entry)
                                if f.name not in type(entry).VOLATILE)]
    values = [list(v) if isinstance(v, tuple) else v for v in values]
    assert entry.canonical() == stock.encode(values).encode()
