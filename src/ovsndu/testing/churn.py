"""Churn for tests and benchmarks: new connections and new MAC addresses at a steady rate.

Run inside an endpoint's namespace (``python -m ovsndu.testing.churn ...``):

- ``udp HOST PORT RATE OUT``: every 1/RATE s one UDP datagram from a fresh source port
  (a new 5-tuple: a new conntrack entry where the pipeline commits new connections).
  OUT gets one line per datagram sent: ``<monotonic time> <source port>``.
- ``mac IFACE RATE OUT``: every 1/RATE s one broadcast frame (EtherType 0x88b5, local
  experimental) from a new locally administered source MAC (a new FDB entry where the
  pipeline uses NORMAL).  OUT gets ``<monotonic time> <mac>`` lines.

Both stop on SIGTERM and flush OUT.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import time
from pathlib import Path

_STOP: list[bool] = []


def _paced(rate: float, out: Path, send: object) -> None:
    assert callable(send)
    signal.signal(signal.SIGTERM, lambda *_: _STOP.append(True))
    start, n = time.monotonic(), 0
    with open(out, "w", buffering=1) as log:
        while not _STOP:
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with contextlib.suppress(OSError):
                log.write(f"{time.monotonic():.6f} {send(n)}\n")
            n += 1


def udp(host: str, port: int, rate: float, out: Path) -> None:
    """A new UDP flow every 1/rate seconds."""
    def send(_n: int) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("", 0))
            s.sendto(b"churn", (host, port))
            return int(s.getsockname()[1])
    _paced(rate, out, send)


def mac(iface: str, rate: float, out: Path) -> None:
    """A frame from a new source MAC every 1/rate seconds."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))

    def send(n: int) -> str:
        src = bytes([0x02, 0xc4, (n >> 24) & 0xFF, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF])
        sock.send(b"\xff" * 6 + src + b"\x88\xb5" + b"churn".ljust(46, b"\0"))
        return ":".join(f"{b:02x}" for b in src)
    _paced(rate, out, send)


def main(argv: list[str]) -> None:
    """Command line (see the module docstring)."""
    if argv[:1] == ["udp"] and len(argv) == 5:
        udp(argv[1], int(argv[2]), float(argv[3]), Path(argv[4]))
    elif argv[:1] == ["mac"] and len(argv) == 4:
        mac(argv[1], float(argv[2]), Path(argv[3]))
    else:
        sys.exit("usage: churn udp HOST PORT RATE OUT | churn mac IFACE RATE OUT")


if __name__ == "__main__":
    main(sys.argv[1:])
