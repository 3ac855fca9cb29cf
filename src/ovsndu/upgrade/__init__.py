"""The upgrade: the pure phase machine and the durable records of past upgrades.

``machine`` decides (no I/O, no clock); ``history`` remembers (files in the state
directory).  The modules that execute phases import from here, never the reverse.
"""

from ovsndu.upgrade.machine import EXIT_COMMITTED as EXIT_COMMITTED
from ovsndu.upgrade.machine import EXIT_INTERNAL as EXIT_INTERNAL
from ovsndu.upgrade.machine import EXIT_REFUSED as EXIT_REFUSED
from ovsndu.upgrade.machine import EXIT_ROLLED_BACK as EXIT_ROLLED_BACK
from ovsndu.upgrade.machine import TERMINAL as TERMINAL
from ovsndu.upgrade.machine import TRANSITIONS as TRANSITIONS
from ovsndu.upgrade.machine import Action as Action
from ovsndu.upgrade.machine import DeadlinePassed as DeadlinePassed
from ovsndu.upgrade.machine import Event as Event
from ovsndu.upgrade.machine import Finish as Finish
from ovsndu.upgrade.machine import Phase as Phase
from ovsndu.upgrade.machine import PhaseFailed as PhaseFailed
from ovsndu.upgrade.machine import PhaseSucceeded as PhaseSucceeded
from ovsndu.upgrade.machine import RunPhase as RunPhase
from ovsndu.upgrade.machine import RunRollback as RunRollback
from ovsndu.upgrade.machine import UpgradeState as UpgradeState
from ovsndu.upgrade.machine import next_deadline as next_deadline
from ovsndu.upgrade.machine import recovery_action as recovery_action
from ovsndu.upgrade.machine import start as start
from ovsndu.upgrade.machine import step as step
