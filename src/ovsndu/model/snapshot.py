"""One vswitchd's whole state: the nine categories in canonical order, with digests.

Pure: no I/O.  :class:`Snapshot` holds every category (entries from
:mod:`ovsndu.model.state`) sorted canonically (by identity, then by canonical encoding)
with a SHA-256 digest each, and its documented JSON shape (format 1) both ways;
:func:`sort_entries` and :func:`category_digest` are the same order and digest for
loose entries.
"""

from __future__ import annotations

import hashlib
import json
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ovsndu.errors import ModelError
from ovsndu.model.state import CATEGORIES, ENTRY_TYPES, FORMAT, Entry, entry_from_dict, json_rows

_JSON_BATCH = 1024


def sort_entries(entries: Iterable[Entry]) -> tuple[Entry, ...]:
    """Canonical order: by identity, then by canonical encoding."""
    return _sorted_with_digest(entries)[0]


def _sorted_with_digest(entries: Iterable[Entry]) -> tuple[tuple[Entry, ...], str]:
    # By identity first: identities are unique but for rare ties, so the canonical
    # encodings are not all held at once for the sort (~60 MiB at 300k entries), only
    # made one at a time for the digest.  The order is the same as sorting by
    # (identity, canonical encoding, all fields).
    keyed = sorted(((e.identity(), e) for e in entries), key=_first)
    ordered: list[Entry] = []
    h = hashlib.sha256()
    i, n = 0, len(keyed)
    while i < n:
        j = i + 1
        while j < n and keyed[j][0] == keyed[i][0]:
            j += 1
        if j == i + 1:
            run = [(keyed[i][1].canonical(), keyed[i][1])]
        else:  # one identity several times: by encoding, then by all fields (rare)
            run = sorted(((e.canonical(), e) for _, e in keyed[i:j]), key=_first)
            if any(run[k][0] == run[k - 1][0] for k in range(1, len(run))):
                run.sort(key=lambda t: (t[0], _full(t[1])))
        for encoded, entry in run:
            h.update(encoded)
            h.update(b"\n")
            ordered.append(entry)
        i = j
    return tuple(ordered), h.hexdigest()


def _first(pair: tuple[Any, Entry]) -> Any:
    return pair[0]


def _full(entry: Entry) -> str:
    return json.dumps(entry.to_dict(), sort_keys=True, default=str)


def sorted_with_digest(entries: Iterable[Entry]) -> tuple[tuple[Entry, ...], str]:
    """:func:`sort_entries` and :func:`category_digest` in one sort."""
    return _sorted_with_digest(entries)


def category_digest(entries: Iterable[Entry]) -> str:
    """SHA-256 over the canonical encodings of *entries* in canonical order."""
    return _sorted_with_digest(entries)[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class VswitchdInfo:
    """Which process the snapshot was read from."""

    pid: int | None
    version: str | None


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Snapshot:
    """Every category of one vswitchd's state, in canonical order, immutable."""

    vswitchd: VswitchdInfo
    categories: Mapping[str, tuple[Entry, ...]]
    _digests: Mapping[str, str] = field(compare=False, repr=False)

    @classmethod
    def build(cls, vswitchd: VswitchdInfo, categories: Mapping[str, Iterable[Entry]],
              *, known: Snapshot | None = None) -> Snapshot:
        """Sort and freeze; every one of the nine categories must be present.  A category
        given as *known*'s own tuple (a read that found exactly an earlier read's rules)
        keeps its order and digest."""
        missing = set(CATEGORIES) - set(categories)
        extra = set(categories) - set(CATEGORIES)
        if missing or extra:
            raise ModelError(f"categories missing {sorted(missing)} / unknown {sorted(extra)}")
        frozen: dict[str, tuple[Entry, ...]] = {}
        digests: dict[str, str] = {}
        for name in CATEGORIES:
            if known is not None and categories[name] is known.categories[name]:
                frozen[name], digests[name] = known.categories[name], known.digest(name)
                continue
            entries, digest = _sorted_with_digest(categories[name])
            wrong = [e for e in entries if name != e.CATEGORY]
            if wrong:
                raise ModelError(f"{name}: holds a {type(wrong[0]).__name__}")
            frozen[name], digests[name] = entries, digest
        return cls(vswitchd, types.MappingProxyType(frozen), types.MappingProxyType(digests))

    def digest(self, category: str) -> str:
        """The category's SHA-256 digest."""
        return self._digests[category]

    def digests(self) -> dict[str, str]:
        """Every category's digest."""
        return {name: self.digest(name) for name in CATEGORIES}

    def counts(self) -> dict[str, int]:
        """Every category's entry count."""
        return {name: len(self.categories[name]) for name in CATEGORIES}

    def replace(self, category: str, entries: Iterable[Entry]) -> Snapshot:
        """A copy with one category's entries replaced (only that one sorted again)."""
        if category not in CATEGORIES:
            raise ModelError(f"unknown category {category!r}")
        sorted_, digest = _sorted_with_digest(entries)
        wrong = [e for e in sorted_ if category != e.CATEGORY]
        if wrong:
            raise ModelError(f"{category}: holds a {type(wrong[0]).__name__}")
        frozen = {name: sorted_ if name == category else self.categories[name]
                  for name in CATEGORIES}
        digests = {name: digest if name == category else self._digests[name]
                   for name in CATEGORIES}
        return Snapshot(self.vswitchd, types.MappingProxyType(frozen),
                        types.MappingProxyType(digests))

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON shape (format 1)."""
        return {
            "format": FORMAT,
            "vswitchd": {"pid": self.vswitchd.pid, "version": self.vswitchd.version},
            "categories": {
                name: {
                    "count": len(entries),
                    "digest": self._digests[name],
                    "entries": [e.to_dict() for e in entries],
                }
                for name, entries in self.categories.items()
            },
        }

    def json_chunks(self, size: int = 1 << 20) -> Iterator[str]:
        """``json.dumps(self.to_dict())`` in pieces of about *size* characters, without
        building the dict or the whole text (at 300k entries those held ~0.5 GiB, and
        one ``json.dumps`` call holds the GIL for seconds)."""
        dumps = json.dumps
        head = {"format": FORMAT, "vswitchd": {"pid": self.vswitchd.pid,
                                               "version": self.vswitchd.version}}
        parts: list[str] = [dumps(head)[:-1], ', "categories": {']
        length = 0
        for n, (name, entries) in enumerate(self.categories.items()):
            parts.append(f'{", " if n else ""}{dumps(name)}: {{"count": {len(entries)}, '
                         f'"digest": {dumps(self._digests[name])}, "entries": [')
            for i in range(0, len(entries), _JSON_BATCH):  # one dumps call a batch
                text = dumps(json_rows(entries[i:i + _JSON_BATCH]))[1:-1]
                parts.append(", " + text if i else text)
                length += len(text)
                if length >= size:
                    yield "".join(parts)
                    parts, length = [], 0
            parts.append("]}")
        parts.append("}}")
        yield "".join(parts)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """Parse the JSON shape; the stored digests and counts must match the entries."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ModelError(f"not an ovsndu snapshot of format {FORMAT}")
        info = data.get("vswitchd") or {}
        cats = data.get("categories")
        if not isinstance(cats, Mapping):
            raise ModelError("snapshot has no 'categories' object")
        built: dict[str, list[Entry]] = {}
        for name, body in cats.items():
            if not isinstance(body, Mapping) or not isinstance(body.get("entries"), list):
                raise ModelError(f"{name}: no 'entries' list")
            built[name] = [entry_from_dict(name, e) for e in body["entries"]]
            if not isinstance(name, str) or name not in ENTRY_TYPES:
                raise ModelError(f"unknown category {name!r}")
        snap = cls.build(VswitchdInfo(pid=info.get("pid"), version=info.get("version")), built)
        for name, body in cats.items():
            if "digest" in body and body["digest"] != snap.digest(name):
                raise ModelError(f"{name}: stored digest does not match its entries")
            if "count" in body and body["count"] != len(snap.categories[name]):
                raise ModelError(f"{name}: stored count does not match its entries")
        return snap
