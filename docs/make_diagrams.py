"""Render the sync protocol's state machines from the code's transition tables.

Writes Mermaid ``stateDiagram-v2`` blocks between the GENERATED markers of
docs/protocol.md, so the diagrams cannot drift from ``ovsndu.protocol.connection``
(h11 does the same with Graphviz).  ``--check`` exits 1 when the file is stale.

    .venv/bin/python docs/make_diagrams.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

from ovsndu.protocol.states import AUTOMATIC, TRANSITIONS, Direction, Side, State

DOC = Path(__file__).with_name("protocol.md")
_SIGIL = {Direction.SEND: "!", Direction.RECEIVE: "?"}


def render(side: Side) -> str:
    """The Mermaid diagram of one side's machine: ``!X`` sends X, ``?X`` receives X."""
    edges: dict[tuple[State, State], list[str]] = defaultdict(list)
    for direction, table in TRANSITIONS[side].items():
        for state, moves in table.items():
            if state is State.ABORTED and direction is Direction.RECEIVE:
                edges[(state, state)].append("?anything (ignored)")
                continue
            for cls, target in moves.items():
                edges[(state, target)].append(_SIGIL[direction] + cls.__name__)
    for state, target in AUTOMATIC.items():
        edges[(state, target)].append("[every category applied]")
    lines = ["```mermaid", "stateDiagram-v2", "    [*] --> IDLE"]
    for (state, target), labels in edges.items():
        lines.append(f"    {state.name} --> {target.name}: {', '.join(sorted(labels))}")
    lines += [
        "    COMMITTED --> [*]",
        "    ABORTED --> [*]",
        "    ERROR --> [*]",
        "    note right of ERROR: any protocol error or missed deadline, from any state",
        "```",
    ]
    return "\n".join(lines)


def updated(text: str) -> str:
    """*text* with every generated block replaced by a fresh rendering."""
    for side in Side:
        begin = f"<!-- BEGIN GENERATED: {side.value} state machine -->"
        end = f"<!-- END GENERATED: {side.value} state machine -->"
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: markers for the {side.value} machine are missing")
        block = f"{begin}\n{render(side)}\n{end}"
        text = pattern.sub(lambda _, block=block: block, text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is stale")
    args = parser.parse_args()
    text = DOC.read_text()
    fresh = updated(text)
    if args.check:
        if fresh != text:
            print(f"{DOC} is stale; run docs/make_diagrams.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
