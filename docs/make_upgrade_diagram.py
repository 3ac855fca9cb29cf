"""Render the upgrade machine's transition table into docs/upgrade.md as a Mermaid diagram.

The diagram is generated from ``ovsndu.upgrade.machine.TRANSITIONS`` and ``OPTIONAL``,
so it cannot drift from the code (h11 does the same for its state diagrams).  It is
written between the markers below; a unit test fails when the doc is stale.

    python docs/make_upgrade_diagram.py          # rewrite docs/upgrade.md
    python docs/make_upgrade_diagram.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

from ovsndu.upgrade.machine import (
    OPTIONAL,
    TERMINAL,
    TRANSITIONS,
    WORKING_ORDER,
    DeadlinePassed,
    Phase,
    PhaseFailed,
    PhaseSucceeded,
)

BEGIN = "<!-- BEGIN upgrade-diagram -->"
END = "<!-- END upgrade-diagram -->"
DOC = Path(__file__).resolve().parent / "upgrade.md"
_LABELS = {PhaseSucceeded: "succeeded", PhaseFailed: "failed", DeadlinePassed: "deadline"}


def render() -> str:
    """The Mermaid block (with its code fence) for the current table."""
    edges: dict[tuple[Phase, Phase], list[str]] = {}
    for phase, moves in TRANSITIONS.items():
        for event_type, move in moves.items():
            label = _LABELS[event_type]
            if move.to is phase:
                label += " (ignored)"
            elif move.rollback:
                label += f" / {move.rollback}"
            elif phase is Phase.COMMIT and event_type is PhaseFailed:
                label += " (anomaly)"
            edges.setdefault((phase, move.to), []).append(label)
            skipped = move.to
            while skipped in OPTIONAL:
                after = TRANSITIONS[skipped][PhaseSucceeded].to
                edges.setdefault((phase, after), []).append(f"{label} ({OPTIONAL[skipped]} off)")
                skipped = after
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {WORKING_ORDER[0].name}"]
    lines += [
        f"    {src.name} --> {dst.name} : {', '.join(labels)}"
        for (src, dst), labels in edges.items()
    ]
    lines += [f"    {phase.name} --> [*]" for phase in Phase if phase in TERMINAL]
    lines.append("```")
    return "\n".join(lines)


def update_text(doc: str) -> str:
    """``doc`` with the text between the markers replaced by :func:`render`."""
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"markers {BEGIN} / {END} not found")
    return f"{head}{BEGIN}\n{render()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    """Rewrite the doc, or with ``--check`` report whether it is stale."""
    doc = DOC.read_text(encoding="utf-8")
    new = update_text(doc)
    if "--check" in argv:
        if new != doc:
            print(f"{DOC} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if new != doc:
        DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
