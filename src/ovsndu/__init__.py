"""ovsndu: non-disruptive live upgrades of Open vSwitch's ovs-vswitchd."""

from ovsndu.model import CATEGORIES as CATEGORIES
from ovsndu.model import Snapshot as Snapshot

__version__ = "0.1.0"
