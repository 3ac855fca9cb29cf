"""readers._counted: a count that stood still must match; a moving one cannot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ovsndu.errors import ParseError
from ovsndu.ovs.readers import _counted


def _counts(values: list[int]) -> Iterator[int]:
    yield from values


def test_still_table_must_match() -> None:
    counts = _counts([10] * 7)
    with pytest.raises(ParseError, match="read 9 entries, but src counts 10"):
        _counted(lambda: [0] * 9, lambda: next(counts), "things", "src")


def test_read_between_two_counts_is_accepted() -> None:
    counts = _counts([10, 8, 12])
    assert len(_counted(lambda: [0] * 9, lambda: next(counts), "things", "src")) == 9


def test_moving_table_is_taken_as_read() -> None:
    # New entries arrive while others expire: every count differs from every read.
    counts = _counts([100, 104, 98, 101, 97, 103, 99])
    assert len(_counted(lambda: [0] * 90, lambda: next(counts), "things", "src")) == 90
