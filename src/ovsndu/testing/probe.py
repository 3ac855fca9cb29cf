"""Traffic probes run inside endpoint namespaces (tests and benchmarks).

``python -m ovsndu.testing.probe tcp-push PORT``: accept connections and push 64 bytes
to each every 20 ms (a download: after the connection is set up, only the server
sends data; the client only acknowledges).
``python -m ovsndu.testing.probe tcp-sink HOST PORT FILE``: connect, read, and keep the
number of bytes received (and, when the connection ends, why) in FILE.
``python -m ovsndu.testing.probe udp-send HOST PORT RATE FILE``: sequence-numbered datagrams
at RATE per second until SIGTERM; the number sent goes to FILE.
``python -m ovsndu.testing.probe udp-recv PORT FILE``: until SIGTERM, record every
datagram's sequence number and arrival time (CLOCK_MONOTONIC, shared by all
namespaces) as ``SEQ TIME`` lines in FILE.
``python -m ovsndu.testing.probe udp-serve PORT RATE``: wait for one datagram, then
stream sequence-numbered datagrams back to its sender at RATE per second (a UDP
"download": after the first datagram only the server sends).
``python -m ovsndu.testing.probe udp-subscribe HOST PORT FILE``: send that one datagram,
then record arrivals on the same socket like ``udp-recv``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

CHUNK = b"x" * 64


def tcp_push(port: int) -> None:
    """Serve every connection with a steady stream until it breaks."""
    srv = socket.create_server(("0.0.0.0", port), reuse_port=True)

    def push(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while True:
                conn.sendall(CHUNK)
                time.sleep(0.02)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=push, args=(conn,), daemon=True).start()


def tcp_sink(host: str, port: int, out: Path) -> None:
    """Count received bytes into *out*; a reset or close ends it with the reason."""
    sock = socket.create_connection((host, port), timeout=5)
    sock.settimeout(None)
    total = 0
    try:
        while chunk := sock.recv(65536):
            total += len(chunk)
            out.write_text(f"{total}\n")
        out.write_text(f"{total}\nerror closed by peer\n")
    except OSError as exc:
        out.write_text(f"{total}\nerror {exc}\n")


_STOP: list[bool] = []
_SEQ = struct.Struct("!Qd")


def _stop_on_term() -> None:
    signal.signal(signal.SIGTERM, lambda *_: _STOP.append(True))


def udp_send(host: str, port: int, rate: float, out: Path) -> None:
    """Paced sender: packet *n* leaves at start + n / rate (no drift)."""
    _stop_on_term()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start, seq = time.monotonic(), 0
    while not _STOP:
        due = start + seq / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with contextlib.suppress(OSError):
            sock.sendto(_SEQ.pack(seq, time.monotonic()).ljust(64, b"\0"), (host, port))
        seq += 1
    out.write_text(f"{seq}\n")


def udp_recv(port: int, out: Path) -> None:
    """Record (seq, arrival) of every datagram until SIGTERM."""
    _stop_on_term()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.1)
    seen: list[str] = []
    while not _STOP:
        try:
            data = sock.recv(2048)
        except (TimeoutError, InterruptedError):
            continue
        seen.append(f"{_SEQ.unpack_from(data)[0]} {time.monotonic():.6f}")
    out.write_text("\n".join(seen) + "\n")


def udp_serve(port: int, rate: float) -> None:
    """Answer the first datagram with a paced stream to its sender until SIGTERM."""
    _stop_on_term()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    _, peer = sock.recvfrom(2048)
    start, seq = time.monotonic(), 0
    while not _STOP:
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with contextlib.suppress(OSError):
            sock.sendto(_SEQ.pack(seq, time.monotonic()).ljust(64, b"\0"), peer)
        seq += 1


def udp_subscribe(host: str, port: int, out: Path) -> None:
    """Send one datagram to *host*:*port*, then record the stream that comes back."""
    _stop_on_term()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.settimeout(0.1)
    seen: list[str] = []
    while not seen and not _STOP:  # the first may be lost while ARP resolves: retry
        with contextlib.suppress(OSError):
            sock.send(b"subscribe")
        with contextlib.suppress(TimeoutError, InterruptedError, OSError):
            data = sock.recv(2048)
            seen.append(f"{_SEQ.unpack_from(data)[0]} {time.monotonic():.6f}")
    while not _STOP:
        try:
            data = sock.recv(2048)
        except (TimeoutError, InterruptedError, OSError):
            continue
        seen.append(f"{_SEQ.unpack_from(data)[0]} {time.monotonic():.6f}")
    out.write_text("\n".join(seen) + "\n")


def main(argv: list[str]) -> None:
    """Dispatch a probe by name."""
    if argv[0] == "tcp-push":
        tcp_push(int(argv[1]))
    elif argv[0] == "tcp-sink":
        tcp_sink(argv[1], int(argv[2]), Path(argv[3]))
    elif argv[0] == "udp-send":
        udp_send(argv[1], int(argv[2]), float(argv[3]), Path(argv[4]))
    elif argv[0] == "udp-recv":
        udp_recv(int(argv[1]), Path(argv[2]))
    elif argv[0] == "udp-serve":
        udp_serve(int(argv[1]), float(argv[2]))
    elif argv[0] == "udp-subscribe":
        udp_subscribe(argv[1], int(argv[2]), Path(argv[3]))
    else:
        raise SystemExit(f"unknown probe {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
