"""Per-category differences between two snapshots (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from ovsndu.model.snapshot import Snapshot, category_digest
from ovsndu.model.state import CATEGORIES, Entry


@dataclass(frozen=True, slots=True)
class CategoryDiff:
    """What differs in one category: entries only in A, only in B, and changed pairs."""

    category: str
    digest_a: str
    digest_b: str
    removed: tuple[Entry, ...]
    added: tuple[Entry, ...]
    changed: tuple[tuple[Entry, Entry], ...]

    @property
    def equal(self) -> bool:
        """Whether the digests match."""
        return self.digest_a == self.digest_b


def diff_category(category: str, a: tuple[Entry, ...], b: tuple[Entry, ...], *,
                  digests: tuple[str, str] | None = None) -> CategoryDiff:
    """Match entries by identity; equal identities with different encodings are changes.

    *digests*: both sides' digests when known (a :class:`Snapshot`'s): equal digests are
    equal canonical encodings, so nothing is matched."""
    digest_a, digest_b = digests or (category_digest(a), category_digest(b))
    if digest_a == digest_b:
        return CategoryDiff(category, digest_a, digest_b, (), (), ())
    index_a: dict[tuple[object, ...], list[Entry]] = {}
    for e in a:
        index_a.setdefault(e.identity(), []).append(e)
    index_b: dict[tuple[object, ...], list[Entry]] = {}
    for e in b:
        index_b.setdefault(e.identity(), []).append(e)
    # Only the identities whose encodings differ are ordered (by repr) and reported.
    differing: list[tuple[dict[bytes, Entry], dict[bytes, Entry], tuple[object, ...]]] = []
    for key in index_a.keys() | index_b.keys():
        left = {e.canonical(): e for e in index_a.get(key, [])}
        right = {e.canonical(): e for e in index_b.get(key, [])}
        if left.keys() != right.keys():
            differing.append((left, right, key))
    removed: list[Entry] = []
    added: list[Entry] = []
    changed: list[tuple[Entry, Entry]] = []
    for left, right, _key in sorted(differing, key=lambda t: repr(t[2])):
        only_left = [left[k] for k in sorted(left.keys() - right.keys())]
        only_right = [right[k] for k in sorted(right.keys() - left.keys())]
        while only_left and only_right:
            changed.append((only_left.pop(0), only_right.pop(0)))
        removed += only_left
        added += only_right
    return CategoryDiff(category, digest_a, digest_b,
                        tuple(removed), tuple(added), tuple(changed))


def diff_snapshots(a: Snapshot, b: Snapshot) -> list[CategoryDiff]:
    """One :class:`CategoryDiff` per category, in the canonical category order."""
    return [diff_category(name, a.categories[name], b.categories[name],
                          digests=(a.digest(name), b.digest(name))) for name in CATEGORIES]
