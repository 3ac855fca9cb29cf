"""The upgrade phase machine: the table, whole-run transcripts, random runs, the doc diagram."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovsndu.errors import IllegalTransition
from ovsndu.upgrade import machine
from ovsndu.upgrade.machine import (
    EXIT_CODES,
    EXIT_COMMITTED,
    EXIT_INTERNAL,
    EXIT_REFUSED,
    EXIT_ROLLED_BACK,
    TERMINAL,
    TRANSITIONS,
    WORKING_ORDER,
    Action,
    DeadlinePassed,
    Event,
    Finish,
    Phase,
    PhaseFailed,
    PhaseSucceeded,
    RunPhase,
    RunRollback,
    UpgradeState,
    next_deadline,
    recovery_action,
    start,
    step,
)

ROOT = Path(__file__).resolve().parents[2]
EVENT_TYPES: tuple[type[Event], ...] = (PhaseSucceeded, PhaseFailed, DeadlinePassed)
WORKING = [p for p in Phase if p not in TERMINAL]


def _event(kind: type[Event], phase: Phase) -> Event:
    if kind is PhaseSucceeded:
        return PhaseSucceeded(phase)
    if kind is PhaseFailed:
        return PhaseFailed(phase, "boom")
    return DeadlinePassed()


def _state_at(phase: Phase, *, validate: bool = True) -> UpgradeState:
    state, _ = start("u1", 0.0, 100.0, validate)
    return dataclasses.replace(state, phase=phase, rollback_mode="discard")


class TestTable:
    def test_every_phase_has_a_row(self) -> None:
        """The table names every phase; terminal rows are empty, working rows full."""
        assert set(TRANSITIONS) == set(Phase)
        for phase in Phase:
            expected = set() if phase in TERMINAL else set(EVENT_TYPES)
            assert set(TRANSITIONS[phase]) == expected, phase

    def test_every_phase_from_client_on_can_reach_rollback(self) -> None:
        """From CLIENT through HANDOVER a failure or the deadline leads to ROLLBACK."""
        for phase in WORKING_ORDER[WORKING_ORDER.index(Phase.CLIENT) :]:
            if phase is Phase.COMMIT:
                continue  # the new vswitchd serves already; see test_commit_never_rolls_back
            moves = TRANSITIONS[phase]
            assert moves[PhaseFailed].to is Phase.ROLLBACK
            assert moves[DeadlinePassed].to is Phase.ROLLBACK

    def test_rollback_modes(self) -> None:
        """Before the handover rollback discards; during it, it restores."""
        for phase in (Phase.CLIENT, Phase.VALIDATION, Phase.STANDBY):
            assert TRANSITIONS[phase][PhaseFailed].rollback == "discard"
        assert TRANSITIONS[Phase.HANDOVER][PhaseFailed].rollback == "restore"
        assert TRANSITIONS[Phase.HANDOVER][DeadlinePassed].rollback == "restore"

    def test_every_working_phase_reaches_a_terminal(self) -> None:
        """Following the table, every phase can end."""
        reachable_end: set[Phase] = set(TERMINAL)
        changed = True
        while changed:
            changed = False
            for phase, moves in TRANSITIONS.items():
                if phase not in reachable_end and any(
                    m.to in reachable_end for m in moves.values()
                ):
                    reachable_end.add(phase)
                    changed = True
        assert reachable_end == set(Phase)

    @pytest.mark.parametrize("phase", list(Phase))
    @pytest.mark.parametrize("kind", EVENT_TYPES)
    def test_missing_pairs_raise(self, phase: Phase, kind: type[Event]) -> None:
        """A (phase, event) pair not in the table raises IllegalTransition naming both."""
        if kind in TRANSITIONS[phase]:
            return
        with pytest.raises(IllegalTransition) as info:
            step(_state_at(phase), _event(kind, phase), 1.0)
        assert phase.name in str(info.value)
        assert kind.__name__ in str(info.value)

    @pytest.mark.parametrize("phase", [p for p in Phase if p in TERMINAL])
    def test_terminal_phases_accept_nothing(self, phase: Phase) -> None:
        """Nothing moves a finished upgrade."""
        for kind in EVENT_TYPES:
            with pytest.raises(IllegalTransition):
                step(_state_at(phase), _event(kind, phase), 1.0)

    @pytest.mark.parametrize("phase", WORKING)
    def test_answer_for_another_phase_is_illegal(self, phase: Phase) -> None:
        """PhaseSucceeded/PhaseFailed must name the current phase."""
        other = Phase.SNAPSHOT if phase is not Phase.SNAPSHOT else Phase.CLIENT
        for event in (PhaseSucceeded(other), PhaseFailed(other, "x")):
            with pytest.raises(IllegalTransition, match=phase.name):
                step(_state_at(phase), event, 1.0)

    def test_exit_codes(self) -> None:
        """Each terminal phase has its documented exit code."""
        assert EXIT_CODES == {
            Phase.COMMITTED: EXIT_COMMITTED,
            Phase.ROLLED_BACK: EXIT_ROLLED_BACK,
            Phase.REFUSED: EXIT_REFUSED,
            Phase.FAILED: EXIT_INTERNAL,
        }
        assert (EXIT_COMMITTED, EXIT_ROLLED_BACK, EXIT_REFUSED, EXIT_INTERNAL) == (0, 1, 2, 3)

    def test_module_is_pure(self) -> None:
        """machine.py imports no I/O, clock or logging modules."""
        tree = ast.parse(Path(machine.__file__).read_text())
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add((node.module or "").split(".")[0])
        forbidden = {"asyncio", "socket", "subprocess", "os", "time", "structlog", "pyroute2"}
        assert not names & forbidden


# --- transcripts -------------------------------------------------------------------------
#
# Each line: ``<now> <event> => <phase> | <actions>``, where event is ``ok``, ``fail <why>``
# or ``deadline``, and actions are ``run PHASE``, ``rollback MODE`` or
# ``finish OUTCOME CODE``; ``-`` means no actions.


def _show(actions: list[Action]) -> str:
    out = []
    for action in actions:
        if isinstance(action, RunPhase):
            out.append(f"run {action.phase.name}")
        elif isinstance(action, RunRollback):
            out.append(f"rollback {action.mode}")
        else:
            out.append(f"finish {action.outcome} {action.exit_code}")
    return ", ".join(out) or "-"


def _replay(transcript: str, *, validate: bool = True, timeout: float = 100.0) -> UpgradeState:
    state, actions = start("u1", 0.0, timeout, validate)
    assert _show(actions) == "run PREFLIGHT"
    for line in filter(None, (raw.strip() for raw in transcript.splitlines())):
        given_part, expected = (s.strip() for s in line.split("=>"))
        now_text, verb, *rest = given_part.split()
        event: Event
        if verb == "ok":
            event = PhaseSucceeded(state.phase)
        elif verb == "fail":
            event = PhaseFailed(state.phase, " ".join(rest))
        else:
            event = DeadlinePassed()
        state, actions = step(state, event, float(now_text))
        assert f"{state.phase.name} | {_show(actions)}" == expected, line
    return state


class TestTranscripts:
    def test_success_with_validation(self) -> None:
        """Every phase runs in order and the upgrade commits with exit 0."""
        state = _replay(
            """
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            3 ok => VALIDATION | run VALIDATION
            4 ok => STANDBY | run STANDBY
            5 ok => HANDOVER | run HANDOVER
            6 ok => COMMIT | run COMMIT
            7 ok => COMMITTED | finish committed 0
            """
        )
        assert [r.phase for r in state.records] == list(WORKING_ORDER)
        assert all(r.ok for r in state.records)
        assert [(r.started, r.ended) for r in state.records][:2] == [(0.0, 1.0), (1.0, 2.0)]
        assert (state.outcome, state.exit_code, state.reason) == ("committed", 0, "")
        assert state.finished

    def test_success_without_validation(self) -> None:
        """With validate off, CLIENT is followed by STANDBY."""
        state = _replay(
            """
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            3 ok => STANDBY | run STANDBY
            4 ok => HANDOVER | run HANDOVER
            5 ok => COMMIT | run COMMIT
            6 ok => COMMITTED | finish committed 0
            """,
            validate=False,
        )
        assert Phase.VALIDATION not in [r.phase for r in state.records]

    @pytest.mark.parametrize("prefix", ["", "1 ok => SNAPSHOT | run SNAPSHOT"])
    def test_refusals(self, prefix: str) -> None:
        """PREFLIGHT or SNAPSHOT failing refuses the upgrade with exit 2."""
        state = _replay(f"{prefix}\n5 fail disk full => REFUSED | finish refused 2")
        assert state.exit_code == EXIT_REFUSED
        assert "disk full" in state.reason
        assert state.records[-1].ok is False

    @pytest.mark.parametrize(
        "steps",
        [
            "",
            "3 ok => VALIDATION | run VALIDATION",
            "3 ok => VALIDATION | run VALIDATION\n4 ok => STANDBY | run STANDBY",
        ],
    )
    def test_failure_before_handover_discards(self, steps: str) -> None:
        """CLIENT, VALIDATION or STANDBY failing rolls back by discarding, exit 1."""
        state = _replay(
            f"""
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            {steps}
            9 fail peer hung up => ROLLBACK | rollback discard
            10 ok => ROLLED_BACK | finish rolled_back 1
            """
        )
        assert state.rollback_mode == "discard"
        assert "peer hung up" in state.reason  # the original failure is kept
        assert [r.phase for r in state.records][-1] is Phase.ROLLBACK

    def test_handover_failure_restores(self) -> None:
        """HANDOVER failing rolls back by restoring the original."""
        state = _replay(
            """
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            3 ok => STANDBY | run STANDBY
            4 ok => HANDOVER | run HANDOVER
            5 fail standby died => ROLLBACK | rollback restore
            6 ok => ROLLED_BACK | finish rolled_back 1
            """,
            validate=False,
        )
        assert state.rollback_mode == "restore"
        assert state.reason == "handover failed: standby died"

    def test_rollback_failure_is_internal(self) -> None:
        """A rollback that fails ends FAILED with exit 3, naming both failures."""
        state = _replay(
            """
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            3 fail no sync => ROLLBACK | rollback discard
            4 fail cannot kill => FAILED | finish failed 3
            """
        )
        assert "cannot kill" in state.reason
        assert "no sync" in state.reason

    def test_commit_failure_is_an_anomaly(self) -> None:
        """COMMIT failing still commits (the new process serves) and records an anomaly."""
        state = _replay(
            """
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            3 ok => STANDBY | run STANDBY
            4 ok => HANDOVER | run HANDOVER
            5 ok => COMMIT | run COMMIT
            6 fail old pid lingers => COMMITTED | finish committed 0
            """,
            validate=False,
        )
        assert state.anomalies == ("commit: commit failed: old pid lingers",)
        assert "old pid lingers" in state.reason

    def test_deadline_in_preflight_refuses(self) -> None:
        """The deadline before anything started refuses."""
        state = _replay("100 deadline => REFUSED | finish refused 2")
        assert "deadline passed in preflight" in state.reason

    def test_deadline_during_sync_discards(self) -> None:
        """The deadline in CLIENT rolls back by discarding."""
        _replay(
            """
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            100 deadline => ROLLBACK | rollback discard
            101 ok => ROLLED_BACK | finish rolled_back 1
            """
        )

    def test_deadline_during_handover_restores(self) -> None:
        """The deadline in HANDOVER rolls back by restoring."""
        _replay(
            """
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            3 ok => STANDBY | run STANDBY
            4 ok => HANDOVER | run HANDOVER
            100 deadline => ROLLBACK | rollback restore
            101 ok => ROLLED_BACK | finish rolled_back 1
            """,
            validate=False,
        )

    def test_deadline_ignored_in_commit_and_rollback(self) -> None:
        """COMMIT and ROLLBACK run to their end; a deadline there is only noted."""
        state = _replay(
            """
            1 ok => SNAPSHOT | run SNAPSHOT
            2 ok => CLIENT | run CLIENT
            3 fail x => ROLLBACK | rollback discard
            100 deadline => ROLLBACK | -
            101 ok => ROLLED_BACK | finish rolled_back 1
            """
        )
        assert state.anomalies
        assert "ignored" in state.anomalies[0]
        assert state.reason == "client failed: x"
        commit = _state_at(Phase.COMMIT)
        after, actions = step(commit, DeadlinePassed(), 200.0)
        assert (after.phase, actions) == (Phase.COMMIT, [])


class TestHelpers:
    def test_start_validates_timeout(self) -> None:
        """A non-positive timeout is a programming error."""
        with pytest.raises(ValueError, match="timeout"):
            start("u", 0.0, 0.0, True)

    def test_deadline_is_started_plus_timeout(self) -> None:
        """The deadline is data, and only applies while it can still change the outcome."""
        state, _ = start("u", 10.0, 5.0, True)
        assert state.deadline == 15.0
        assert next_deadline(state) == 15.0
        assert next_deadline(_state_at(Phase.COMMIT)) is None
        assert next_deadline(_state_at(Phase.ROLLBACK)) is None
        assert next_deadline(_state_at(Phase.COMMITTED)) is None

    def test_recovery_actions(self) -> None:
        """A crash before the handover discards, in it decides, after it commits."""
        for phase in (Phase.PREFLIGHT, Phase.SNAPSHOT, Phase.CLIENT, Phase.VALIDATION):
            assert recovery_action(phase) == "discard"
        assert recovery_action(Phase.STANDBY) == "discard"
        assert recovery_action(Phase.HANDOVER) == "handover"
        assert recovery_action(Phase.COMMIT) == "commit"
        assert recovery_action(Phase.ROLLBACK, "discard") == "discard"
        assert recovery_action(Phase.ROLLBACK, "restore") == "restore"
        for phase in TERMINAL:
            assert recovery_action(phase) == "none"


# --- random runs -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    validate=st.booleans(),
    answers=st.lists(st.sampled_from(["ok", "fail", "deadline", "stray"]), max_size=30),
)
def test_random_runs_always_end(validate: bool, answers: list[str]) -> None:
    """Random answers never reach an undefined state; answering every action always ends.

    ``stray`` is an answer for the wrong phase: it must raise and change nothing.
    After the random prefix the runner answers ``ok`` until the upgrade finishes.
    """
    state, actions = start("u", 0.0, 50.0, validate)
    now = 0.0
    finished: Finish | None = None

    def feed(answer: str) -> None:
        nonlocal state, actions, finished, now
        now += 1.0
        event: Event
        if answer == "ok":
            event = PhaseSucceeded(state.phase)
        elif answer == "fail":
            event = PhaseFailed(state.phase, "random")
        elif answer == "deadline":
            event = DeadlinePassed()
        else:
            stray = Phase.FAILED if state.phase is not Phase.FAILED else Phase.COMMIT
            with pytest.raises(IllegalTransition):
                step(state, PhaseSucceeded(stray), now)
            return
        state, actions = step(state, event, now)
        assert state.phase in TRANSITIONS
        for action in actions:
            if isinstance(action, Finish):
                finished = action
            elif isinstance(action, RunPhase):
                assert action.phase is state.phase
            else:
                assert state.phase is Phase.ROLLBACK
                assert action.mode == state.rollback_mode

    for answer in answers:
        if state.finished:
            break
        feed(answer)
    for _ in range(len(WORKING_ORDER) + 2):
        if state.finished:
            break
        feed("ok")
    assert state.finished
    assert finished is not None
    assert finished.exit_code == EXIT_CODES[state.phase] == state.exit_code
    assert finished.outcome == state.outcome == state.phase.value


# --- the diagram in docs/upgrade.md ------------------------------------------------------


def _diagram_module() -> ModuleType:
    path = ROOT / "docs" / "make_upgrade_diagram.py"
    spec = importlib.util.spec_from_file_location("make_upgrade_diagram", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_diagram_is_up_to_date() -> None:
    """docs/upgrade.md holds the diagram rendered from the current table."""
    module = _diagram_module()
    doc = (ROOT / "docs" / "upgrade.md").read_text(encoding="utf-8")
    assert module.update_text(doc) == doc, "run: python docs/make_upgrade_diagram.py"


def test_diagram_shows_every_move() -> None:
    """Every table entry appears as an edge in the rendered diagram."""
    text = _diagram_module().render()
    for phase, moves in TRANSITIONS.items():
        for move in moves.values():
            assert f"{phase.name} --> {move.to.name}" in text
    assert "CLIENT --> STANDBY" in text  # the skip rule
