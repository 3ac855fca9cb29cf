"""docs/protocol.md carries state diagrams generated from the transition tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ovsndu.protocol import Side

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _make_diagrams() -> object:
    spec = importlib.util.spec_from_file_location("make_diagrams", DOCS / "make_diagrams.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagrams_up_to_date() -> None:
    """The doc's diagrams equal a fresh rendering (run docs/make_diagrams.py if not)."""
    make = _make_diagrams()
    text = (DOCS / "protocol.md").read_text()
    assert make.updated(text) == text  # type: ignore[attr-defined]


def test_every_message_documented() -> None:
    """Every message and every state of both machines appears in the doc."""
    from ovsndu.protocol.messages import MESSAGE_TYPES
    from ovsndu.protocol.states import TRANSITIONS

    text = (DOCS / "protocol.md").read_text()
    for cls in MESSAGE_TYPES.values():
        assert f"`{cls.__name__}`" in text
    for side in Side:
        for table in TRANSITIONS[side].values():
            for state in table:
                assert state.name in text
