"""The upgrade as a pure state machine: phases, the transition table, and ``step``.

Rules of this module (after h11's ``_state.py``):

1. Every move lives in :data:`TRANSITIONS` (``phase -> event type -> Move``) and in the
   one skip rule :data:`OPTIONAL` (a phase whose flag is off is passed through).  A
   ``(phase, event)`` pair missing from the table is the single choke point for
   illegal input: :class:`~ovsndu.errors.IllegalTransition` naming both.
2. No I/O and no clock.  Every call takes ``now`` (seconds on any monotonic clock);
   the deadline is data (:attr:`UpgradeState.deadline`) that the runner arms and
   reports back as :class:`DeadlinePassed`.
3. Inputs are past-tense events the runner observed; outputs are imperative actions
   the runner must execute.  Each :class:`RunPhase` / :class:`RunRollback` is
   answered with exactly one :class:`PhaseSucceeded` or :class:`PhaseFailed` for
   that phase; an answer for any other phase is illegal.

What must not live here: how a phase is carried out (``runner.py``), persistence
(``history.py``), logging and systemd notification.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ovsndu.errors import IllegalTransition

EXIT_COMMITTED = 0
EXIT_ROLLED_BACK = 1
EXIT_REFUSED = 2
EXIT_INTERNAL = 3

RollbackMode = Literal["discard", "restore"]
RecoveryAction = Literal["discard", "handover", "restore", "commit", "none"]


class Phase(enum.Enum):
    """Where an upgrade is.  Working phases run something; terminal ones are outcomes."""

    PREFLIGHT = "preflight"  # checks: binaries, versions, sockets, disk; nothing changes
    SNAPSHOT = "snapshot"  # read the serving vswitchd's state (nine categories)
    CLIENT = "client"  # start the client process and sync state over the channel
    VALIDATION = "validation"  # rehearse the new binary on the dummy datapath
    STANDBY = "standby"  # start the new vswitchd beside the old one, state restored
    HANDOVER = "handover"  # the old one lets go of the datapath, the new one takes it
    COMMIT = "commit"  # stop the old one, record the new binary as serving
    ROLLBACK = "rollback"  # undo: mode "discard" or "restore"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    REFUSED = "refused"
    FAILED = "failed"


WORKING_ORDER = (
    Phase.PREFLIGHT,
    Phase.SNAPSHOT,
    Phase.CLIENT,
    Phase.VALIDATION,
    Phase.STANDBY,
    Phase.HANDOVER,
    Phase.COMMIT,
)
TERMINAL = frozenset({Phase.COMMITTED, Phase.ROLLED_BACK, Phase.REFUSED, Phase.FAILED})
EXIT_CODES: Mapping[Phase, int] = {
    Phase.COMMITTED: EXIT_COMMITTED,
    Phase.ROLLED_BACK: EXIT_ROLLED_BACK,
    Phase.REFUSED: EXIT_REFUSED,
    Phase.FAILED: EXIT_INTERNAL,
}


# --- events (past tense: what the runner observed) --------------------------------------


@dataclass(frozen=True, slots=True)
class PhaseSucceeded:
    """The runner finished ``phase`` successfully."""

    phase: Phase


@dataclass(frozen=True, slots=True)
class PhaseFailed:
    """The runner could not finish ``phase``; ``reason`` is one line."""

    phase: Phase
    reason: str


@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    """The upgrade's deadline (:attr:`UpgradeState.deadline`) has passed."""


Event = PhaseSucceeded | PhaseFailed | DeadlinePassed


# --- actions (imperative: what the runner must do) --------------------------------------


@dataclass(frozen=True, slots=True)
class RunPhase:
    """Execute ``phase``, then feed back PhaseSucceeded or PhaseFailed for it."""

    phase: Phase


@dataclass(frozen=True, slots=True)
class RunRollback:
    """Undo the upgrade, then feed back PhaseSucceeded/PhaseFailed for ROLLBACK.

    ``discard``: before the handover; kill the client and the standby, the serving
    vswitchd never stopped.  ``restore``: during the handover; restart the original
    binary and restore the snapshot into it.
    """

    mode: RollbackMode
    reason: str


@dataclass(frozen=True, slots=True)
class Finish:
    """The upgrade is over: record it, report ``outcome``, exit with ``exit_code``."""

    outcome: str
    exit_code: int
    reason: str


Action = RunPhase | RunRollback | Finish


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Move:
    """One table entry: go to ``to``; ``rollback`` is the mode when ``to`` is ROLLBACK."""

    to: Phase
    rollback: RollbackMode | None = None


P = Phase
_REFUSE = Move(P.REFUSED)
_DISCARD = Move(P.ROLLBACK, "discard")
_RESTORE = Move(P.ROLLBACK, "restore")

# fmt: off
TRANSITIONS: Mapping[Phase, Mapping[type[Event], Move]] = {
    P.PREFLIGHT: {PhaseSucceeded: Move(P.SNAPSHOT), PhaseFailed: _REFUSE, DeadlinePassed: _REFUSE},
    P.SNAPSHOT: {PhaseSucceeded: Move(P.CLIENT), PhaseFailed: _REFUSE, DeadlinePassed: _REFUSE},
    P.CLIENT: {PhaseSucceeded: Move(P.VALIDATION), PhaseFailed: _DISCARD, DeadlinePassed: _DISCARD},
    P.VALIDATION: {PhaseSucceeded: Move(P.STANDBY), PhaseFailed: _DISCARD, DeadlinePassed: _DISCARD},  # noqa: E501
    P.STANDBY: {PhaseSucceeded: Move(P.HANDOVER), PhaseFailed: _DISCARD, DeadlinePassed: _DISCARD},
    P.HANDOVER: {PhaseSucceeded: Move(P.COMMIT), PhaseFailed: _RESTORE, DeadlinePassed: _RESTORE},
    # The new vswitchd already serves: a failed commit is an anomaly, not a rollback,
    # and the deadline no longer applies (stopping half-way would be worse).
    P.COMMIT: {
        PhaseSucceeded: Move(P.COMMITTED),
        PhaseFailed: Move(P.COMMITTED),
        DeadlinePassed: Move(P.COMMIT),
    },
    # A rollback must run to its end; the deadline cannot make it any better.
    P.ROLLBACK: {
        PhaseSucceeded: Move(P.ROLLED_BACK),
        PhaseFailed: Move(P.FAILED),
        DeadlinePassed: Move(P.ROLLBACK),
    },
    P.COMMITTED: {},
    P.ROLLED_BACK: {},
    P.REFUSED: {},
    P.FAILED: {},
}
# fmt: on

OPTIONAL: Mapping[Phase, str] = {P.VALIDATION: "validate"}
"""Phases skipped when the named :class:`UpgradeState` flag is false."""


# --- state -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PhaseRecord:
    """One finished phase: when it ran (runner clock), whether it succeeded, and why not."""

    phase: Phase
    started: float
    ended: float
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeState:
    """Everything the machine knows about one upgrade.  Replace, never mutate."""

    upgrade_id: str
    phase: Phase
    started_at: float
    deadline: float
    validate: bool
    phase_started: float
    records: tuple[PhaseRecord, ...] = ()
    rollback_mode: RollbackMode | None = None
    reason: str = ""
    outcome: str | None = None
    exit_code: int | None = None
    anomalies: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        """Whether the upgrade reached a terminal phase."""
        return self.phase in TERMINAL


def start(
    upgrade_id: str, now: float, timeout: float, validate: bool = True
) -> tuple[UpgradeState, list[Action]]:
    """A new upgrade in PREFLIGHT, and the action to run it."""
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    state = UpgradeState(
        upgrade_id=upgrade_id,
        phase=Phase.PREFLIGHT,
        started_at=now,
        deadline=now + timeout,
        validate=validate,
        phase_started=now,
    )
    return state, [RunPhase(Phase.PREFLIGHT)]


def step(state: UpgradeState, event: Event, now: float) -> tuple[UpgradeState, list[Action]]:
    """Apply one event at time ``now``; return the new state and the actions to run."""
    try:
        move = TRANSITIONS[state.phase][type(event)]
    except KeyError:
        raise IllegalTransition(
            f"upgrade {state.upgrade_id}: no transition for {type(event).__name__} "
            f"in phase {state.phase.name}"
        ) from None
    if isinstance(event, PhaseSucceeded | PhaseFailed) and event.phase is not state.phase:
        raise IllegalTransition(
            f"upgrade {state.upgrade_id}: {type(event).__name__}({event.phase.name}) "
            f"in phase {state.phase.name}"
        )
    if move.to is state.phase:  # an ignored deadline: note it, change nothing else
        note = f"deadline passed during {state.phase.name}, ignored: it must finish"
        return dataclasses.replace(state, anomalies=(*state.anomalies, note)), []

    reason = _reason(state, event, now)
    failed = not isinstance(event, PhaseSucceeded)
    record = PhaseRecord(state.phase, state.phase_started, now, ok=not failed, reason=reason)
    new = dataclasses.replace(state, records=(*state.records, record), phase_started=now)

    to = move.to
    while to in OPTIONAL and not getattr(state, OPTIONAL[to]):
        to = TRANSITIONS[to][PhaseSucceeded].to

    if to is Phase.ROLLBACK:
        assert move.rollback is not None
        new = dataclasses.replace(new, phase=to, rollback_mode=move.rollback, reason=reason)
        return new, [RunRollback(move.rollback, reason)]
    if to not in TERMINAL:
        return dataclasses.replace(new, phase=to), [RunPhase(to)]

    if state.phase is Phase.COMMIT and failed:
        new = dataclasses.replace(new, anomalies=(*new.anomalies, f"commit: {reason}"))
        final_reason = f"committed with an anomaly: {reason}"
    elif state.phase is Phase.ROLLBACK:
        final_reason = state.reason if not failed else f"{reason} (after: {state.reason})"
    else:
        final_reason = reason
    outcome, code = to.value, EXIT_CODES[to]
    new = dataclasses.replace(new, phase=to, reason=final_reason, outcome=outcome, exit_code=code)
    return new, [Finish(outcome, code, final_reason)]


def _reason(state: UpgradeState, event: Event, now: float) -> str:
    if isinstance(event, PhaseFailed):
        return f"{state.phase.value} failed: {event.reason}"
    if isinstance(event, DeadlinePassed):
        timeout = state.deadline - state.started_at
        return (
            f"deadline passed in {state.phase.value} after {now - state.started_at:.1f}s "
            f"(timeout {timeout:g}s)"
        )
    return ""


def next_deadline(state: UpgradeState) -> float | None:
    """When the runner should feed DeadlinePassed, or None if the deadline no longer applies."""
    moves = TRANSITIONS[state.phase]
    if DeadlinePassed not in moves or moves[DeadlinePassed].to is state.phase:
        return None
    return state.deadline


def recovery_action(phase: Phase, rollback_mode: RollbackMode | None = None) -> RecoveryAction:
    """What a restarted supervisor must do about an in-flight upgrade found at ``phase``.

    ``discard``: before the handover, kill whatever was started; the old vswitchd serves.
    ``handover``: the crash hit the handover; find out which vswitchd holds the
    datapath, then finish the commit or restore the original.
    ``restore``: a restore-mode rollback was under way; run it again.
    ``commit``: the new vswitchd serves; finish the commit.
    ``none``: the upgrade already ended; only the record needs closing.
    """
    if phase in TERMINAL:
        return "none"
    if phase is Phase.ROLLBACK:
        return "restore" if rollback_mode == "restore" else "discard"
    if phase is Phase.HANDOVER:
        return "handover"
    if phase is Phase.COMMIT:
        return "commit"
    return "discard"
