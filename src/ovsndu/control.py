"""The supervisor's control socket, client side: one JSON request, JSON-line answers."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from ovsndu.errors import OvsnduError


class SupervisorUnreachable(OvsnduError):
    """No supervisor answers on the control socket."""


def request(path: str, payload: dict[str, Any],
            on_event: Callable[[dict[str, Any]], None] | None = None,
            timeout: float | None = None) -> dict[str, Any]:
    """Send *payload*; pass each streamed event to *on_event*; return the final answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise SupervisorUnreachable(f"no supervisor on {path}: {exc.strerror or exc}") from None
    with sock, sock.makefile("rb") as stream:
        sock.sendall(json.dumps(payload).encode() + b"\n")
        last: dict[str, Any] = {}
        for line in stream:
            try:
                last = json.loads(line)
            except ValueError:
                raise OvsnduError(f"garbled answer from the supervisor: {line[:100]!r}") from None
            if last.get("event") in ("result", "status", "error"):
                return last
            if on_event is not None:
                on_event(last)
    raise OvsnduError("the supervisor closed the connection before answering")
