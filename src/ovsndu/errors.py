"""The whole ovsndu exception hierarchy, in one module to avoid import loops.

Every error a user can see is an :class:`OvsnduError`; its ``str()`` is one line
naming what failed.  Anything else escaping is a bug in ovsndu.
"""

from __future__ import annotations


class OvsnduError(Exception):
    """Base of every expected ovsndu failure."""


class ModelError(OvsnduError):
    """A snapshot or entry does not have the documented shape."""


class ParseError(OvsnduError):
    """Output of an OVS tool could not be parsed."""

    def __init__(self, what: str, line: str, reason: str) -> None:
        super().__init__(f"cannot parse {what}: {reason}: {line[:200]!r}")
        self.what = what
        self.line = line
        self.reason = reason


class BackendError(OvsnduError):
    """Talking to an OVS daemon or a system service failed."""


class VswitchdError(BackendError):
    """ovs-vswitchd (or an OVS tool driving it) failed or is unreachable."""


class OvsdbError(BackendError):
    """ovsdb-server failed or is unreachable, or a transaction was refused."""


class SandboxError(BackendError):
    """A private OVS instance could not be started or stopped."""


class RestoreError(OvsnduError):
    """State could not be installed into a vswitchd, or read back different."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(f"restore of {category} failed: {reason}")
        self.category = category
        self.reason = reason


class ProtocolError(OvsnduError):
    """The sync channel was violated; abstract, see the two subclasses."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the sync protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer did something the sync protocol does not allow."""


class IllegalTransition(OvsnduError):
    """An upgrade state machine got an input its table has no move for."""


class InternalError(OvsnduError):
    """A bug in ovsndu; this should never happen."""


class SyncTimeout(RemoteProtocolError):
    """The sync peer missed a protocol deadline (hello, progress, apply or liveness)."""

    def __init__(self, what: str, state: str, waited: float) -> None:
        super().__init__(f"sync {what} deadline expired in state {state} after {waited:.1f}s")
        self.what = what
        self.state = state
        self.waited = waited


class SyncAborted(OvsnduError):
    """The upgrade was aborted over the sync channel; ``by_peer`` says who aborted."""

    def __init__(self, reason: str, *, by_peer: bool) -> None:
        who = "peer" if by_peer else "us"
        super().__init__(f"sync aborted by {who}: {reason}")
        self.reason = reason
        self.by_peer = by_peer


class ConfigError(OvsnduError):
    """The configuration file is missing, malformed, or names an unknown key or a wrong type."""


class HistoryError(OvsnduError):
    """An upgrade record in the state directory is unreadable or has the wrong shape."""
