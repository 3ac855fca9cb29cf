"""A workload that keeps creating switch state, with counters: what got through, what must not.

:mod:`ovsndu.testing.churn` has the bare generators (tests/upgrade/test_churn.py); this
module pairs each sender with a receiver so a run can count delivered, answered and
forbidden packets, time when each datagram left (to tell a leak after a rule change
from traffic before it), and measure an established TCP stream's longest pause.  Used
by tests/ovn and ``benchmarks.disruption --churn/--ovn``.

Probes, run inside endpoint namespaces (``python -m ovsndu.testing.workload NAME ...``):

``udp-churn HOST PORT RATE FILE [BASE]``
    RATE datagrams a second, each from a **new source port** (BASE, default 10000, to
    BASE+14999 in turn: a port comes back only after 15000 connections, so each
    datagram is a new connection for conntrack).  Each carries its sequence number
    and send time; the socket stays open for a second to count the echo.  Every
    second and at SIGTERM: ``sent N`` / ``answered M`` / ``seconds S``.
``udp-echo PORT FILE [echo|quiet]``
    Records ``SEQ SENT ARRIVED`` for every datagram (CLOCK_MONOTONIC, shared by all
    namespaces), echoing it back unless ``quiet``; written at SIGTERM.
``mac-churn IFACE RATE FILE``
    RATE broadcast ARP requests a second from a **new source MAC** each (locally
    administered ``02:c0:xx:xx:xx:xx``, asking for addresses in 10.255.0.0/16 that no
    one holds): a bridge doing MAC learning learns one new FDB entry per frame.
``tcp-watch HOST PORT FILE``
    Connects (to a ``probe tcp-push`` server) and keeps ``bytes``, ``max_gap_ms`` (the
    longest pause between two receipts), ``max_gap_end`` (when it ended, CLOCK_MONOTONIC)
    and, when it ends, ``error REASON`` in FILE.

:class:`Churn` starts them on two endpoints and reads their counters back.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovsndu.ovs.sandbox import _die_with_parent
from ovsndu.testing.endpoints import Endpoint

SPORT_BASE, SPORT_COUNT = 10000, 15000
_PAYLOAD = struct.Struct("!Qd")
_STOP: list[bool] = []


def _stop_on_term() -> None:
    signal.signal(signal.SIGTERM, lambda *_: _STOP.append(True))


def udp_churn(host: str, port: int, rate: float, out: Path, base: int = SPORT_BASE) -> None:
    """Paced new connections: datagram *n* leaves at start + n / rate from a fresh port
    (*base* + n modulo SPORT_COUNT)."""
    _stop_on_term()
    open_socks: deque[tuple[float, socket.socket]] = deque()
    sent = answered = seq = 0
    start = reported = time.monotonic()
    out.write_text("sent 0\nanswered 0\n")
    while not _STOP:
        now = time.monotonic()
        if now - reported > 1.0:
            out.write_text(f"sent {sent}\nanswered {answered}\nseconds {now - start:.3f}\n")
            reported = now
        while open_socks and open_socks[0][0] < now - 1.0:
            open_socks.popleft()[1].close()
        ready, _, _ = select.select([s for _, s in open_socks], [], [],
                                    max(0.0, start + seq / rate - now))
        for s in ready:
            with contextlib.suppress(OSError):
                s.recv(2048)
                answered += 1
        if time.monotonic() < start + seq / rate:
            continue
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind(("0.0.0.0", base + seq % SPORT_COUNT))
            sock.sendto(_PAYLOAD.pack(seq, time.monotonic()).ljust(64, b"\0"), (host, port))
            sent += 1
            open_socks.append((time.monotonic(), sock))
        except OSError:
            sock.close()
        seq += 1
    out.write_text(f"sent {sent}\nanswered {answered}\n"
                   f"seconds {time.monotonic() - start:.3f}\n")


def udp_echo(port: int, out: Path, echo: bool = True) -> None:
    """Record (seq, sent, arrived) of every datagram until SIGTERM; echo each back."""
    _stop_on_term()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.1)
    seen: list[str] = []
    while not _STOP:
        try:
            data, peer = sock.recvfrom(2048)
        except (TimeoutError, InterruptedError):
            continue
        arrived = time.monotonic()
        seq, sent = _PAYLOAD.unpack_from(data)
        seen.append(f"{seq} {sent:.6f} {arrived:.6f}")
        if echo:
            with contextlib.suppress(OSError):
                sock.sendto(data, peer)
    out.write_text("".join(f"{line}\n" for line in seen))


def mac_churn(iface: str, rate: float, out: Path) -> None:
    """Broadcast ARP requests, each from a new locally administered MAC."""
    _stop_on_term()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    start, n = time.monotonic(), 0
    out.write_text("sent 0\n")
    while not _STOP:
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        mac = bytes([0x02, 0xC0]) + n.to_bytes(4, "big")
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac,
                          bytes([10, 255, (n >> 8) & 0xFF, n & 0xFF]), b"\0" * 6,
                          bytes([10, 255, 255, 254]))
        with contextlib.suppress(OSError):
            sock.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
        n += 1
    out.write_text(f"sent {n}\n")


def tcp_watch(host: str, port: int, out: Path) -> None:
    """Read a stream; keep bytes, the longest pause between receipts and why it ended."""
    _stop_on_term()
    sock = socket.create_connection((host, port), timeout=5)
    sock.settimeout(0.2)
    total, worst, last, worst_end = 0, 0.0, time.monotonic(), 0.0

    def write(error: str = "") -> None:
        out.write_text(f"bytes {total}\nmax_gap_ms {worst * 1000:.1f}\n"
                       f"max_gap_end {worst_end:.6f}\n"
                       + (f"error {error}\n" if error else ""))

    try:
        while not _STOP:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                write("closed by peer")
                return
            now = time.monotonic()
            if now - last > worst:
                worst, worst_end = now - last, now
            last = now
            total += len(chunk)
            write()
    except OSError as exc:
        write(str(exc))
        return
    if time.monotonic() - last > worst:
        worst, worst_end = time.monotonic() - last, time.monotonic()
    write()


def read_counters(path: Path) -> dict[str, Any]:
    """``key value`` lines of a probe's FILE as a dict (numbers as numbers)."""
    out: dict[str, Any] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = float(value) if "." in value else int(value)
        except ValueError:
            out[key] = value
    return out


def read_arrivals(path: Path) -> list[tuple[int, float, float]]:
    """(seq, sent, arrived) lines written by ``udp-echo``, in arrival order."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        seq, sent, arrived = line.split()
        rows.append((int(seq), float(sent), float(arrived)))
    return sorted(rows, key=lambda r: r[2])


@dataclass
class Churn:
    """New UDP connections A→B (each committed by a stateful ACL), forbidden new
    connections B→A, new MACs from A, and an established TCP download B→A.

    *tcp_host*/*tcp_port*: where A's TCP client connects (B itself, or a load
    balancer VIP in front of it); B serves on *tcp_backend_port*.  *victim_port*: a
    second stream of new connections A→B at *rate*, for a rule added later to forbid
    (``victim_arrivals()`` says what got through, with send times).
    """

    a: Endpoint
    b: Endpoint
    work: Path
    rate: float = 200.0
    forbidden_rate: float = 50.0
    mac_rate: float = 0.0
    tcp_host: str = ""
    tcp_port: int = 5001
    tcp_backend_port: int = 5001
    victim_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _senders: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _receivers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    PORT, FORBIDDEN_PORT = 7100, 9998

    def _probe(self, ep: Endpoint, module: str, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(ep.argv([sys.executable, "-m", module, *args]),
                             preexec_fn=_die_with_parent)  # none outlives its creator
        self.procs.append(p)
        return p

    def start(self) -> None:
        """Receivers and the TCP stream first, then the churn senders."""
        w, me = self.work, "ovsndu.testing.workload"
        w.mkdir(parents=True, exist_ok=True)
        self._receivers += [
            self._probe(self.b, me, "udp-echo", str(self.PORT), str(w / "churn-recv.txt")),
            self._probe(self.a, me, "udp-echo", str(self.FORBIDDEN_PORT),
                        str(w / "churn-forbidden-recv.txt"), "quiet"),
        ]
        if self.victim_port:
            self._receivers.append(self._probe(self.b, me, "udp-echo", str(self.victim_port),
                                               str(w / "churn-victim-recv.txt"), "quiet"))
        self._probe(self.b, "ovsndu.testing.probe", "tcp-push", str(self.tcp_backend_port))
        time.sleep(0.5)
        self.tcp = self._probe(self.a, me, "tcp-watch", self.tcp_host or self.b.ip,
                               str(self.tcp_port), str(w / "churn-tcp.txt"))
        self._senders += [
            self._probe(self.a, me, "udp-churn", self.b.ip, str(self.PORT), str(self.rate),
                        str(w / "churn-sent.txt")),
            self._probe(self.b, me, "udp-churn", self.a.ip, str(self.FORBIDDEN_PORT),
                        str(self.forbidden_rate), str(w / "churn-forbidden-sent.txt")),
        ]
        if self.victim_port:
            self._senders.append(self._probe(self.a, me, "udp-churn", self.b.ip,
                                             str(self.victim_port), str(self.rate),
                                             str(w / "churn-victim-sent.txt"),
                                             str(SPORT_BASE + SPORT_COUNT)))
        if self.mac_rate:
            self._senders.append(self._probe(self.a, me, "mac-churn", "eth0",
                                             str(self.mac_rate), str(w / "churn-macs.txt")))
        files = ["churn-sent.txt", "churn-forbidden-sent.txt"] + (
            ["churn-macs.txt"] if self.mac_rate else []) + (
            ["churn-victim-sent.txt"] if self.victim_port else [])
        deadline = time.monotonic() + 60
        while not (all((w / f).exists() for f in files) and self.tcp_bytes() > 0):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"churn probes did not start (see {w})")
            time.sleep(0.05)

    def tcp_bytes(self) -> int:
        """Bytes the TCP download has delivered so far."""
        return int(read_counters(self.work / "churn-tcp.txt").get("bytes", 0))

    def victim_arrivals(self) -> list[tuple[int, float, float]]:
        """(seq, sent, arrived) of the victim stream (complete once stopped)."""
        return read_arrivals(self.work / "churn-victim-recv.txt")

    def stop(self, tcp_patience: float = 10.0) -> dict[str, Any]:
        """Stop every probe (senders first) and return the counters.

        The TCP download counts as surviving when it still delivers within *tcp_patience*
        seconds: after a long pause TCP retransmits with exponential back-off (~3 s
        between tries after a 1.5 s outage), while a connection whose conntrack entry was
        lost never delivers again through the ACL."""
        before = self.tcp_bytes()
        deadline = time.monotonic() + tcp_patience
        while not (tcp_moving := self.tcp_bytes() > before) and time.monotonic() < deadline:
            time.sleep(0.1)
        for group in (self._senders, self._receivers, [self.tcp]):
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
            time.sleep(0.2)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        w = self.work
        sent = read_counters(w / "churn-sent.txt")
        fsent = read_counters(w / "churn-forbidden-sent.txt")
        tcp = read_counters(w / "churn-tcp.txt")
        arrivals = read_arrivals(w / "churn-recv.txt")
        seconds = float(sent.get("seconds", 0))
        return {
            "new_connections_sent": sent.get("sent", 0),
            "new_connections_delivered": len(arrivals),
            "new_connections_answered": sent.get("answered", 0),
            "new_connections_per_s": sent.get("sent", 0) / seconds if seconds else 0.0,
            "forbidden_sent": fsent.get("sent", 0),
            "forbidden_delivered": len(read_arrivals(w / "churn-forbidden-recv.txt")),
            "victim_sent": read_counters(w / "churn-victim-sent.txt").get("sent", 0),
            "victim_delivered": len(self.victim_arrivals()),
            "macs_sent": read_counters(w / "churn-macs.txt").get("sent", 0),
            "tcp_bytes": tcp.get("bytes", 0),
            "tcp_max_gap_ms": tcp.get("max_gap_ms"),
            "tcp_max_gap_end": tcp.get("max_gap_end"),
            "tcp_error": tcp.get("error", ""),
            "tcp_survived": "error" not in tcp and tcp_moving,
        }


def main(argv: list[str]) -> None:
    """Dispatch a probe by name."""
    name, args = argv[0], argv[1:]
    if name == "udp-churn":
        udp_churn(args[0], int(args[1]), float(args[2]), Path(args[3]),
                  *(int(a) for a in args[4:5]))
    elif name == "udp-echo":
        udp_echo(int(args[0]), Path(args[1]), echo=args[2:] != ["quiet"])
    elif name == "mac-churn":
        mac_churn(args[0], float(args[1]), Path(args[2]))
    elif name == "tcp-watch":
        tcp_watch(args[0], int(args[1]), Path(args[2]))
    else:
        raise SystemExit(f"unknown probe {name!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
