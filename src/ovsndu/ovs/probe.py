"""Traffic probes run inside endpoint namespaces (tests and benchmarks).

``python -m ovsndu.ovs.probe tcp-push PORT``: accept connections and push 64 bytes
to each every 20 ms (a download: after the connection is set up, only the server
sends data; the client only acknowledges).
``python -m ovsndu.ovs.probe tcp-sink HOST PORT FILE``: connect, read, and keep the
number of bytes received (and, when the connection ends, why) in FILE.
"""

from __future__ import annotations

import contextlib
import socket
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


def main(argv: list[str]) -> None:
    """Dispatch a probe by name."""
    if argv[0] == "tcp-push":
        tcp_push(int(argv[1]))
    elif argv[0] == "tcp-sink":
        tcp_sink(argv[1], int(argv[2]), Path(argv[3]))
    else:
        raise SystemExit(f"unknown probe {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
