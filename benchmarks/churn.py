"""benchmarks.disruption's switch that keeps changing: ``--churn RATE`` and ``--ovn``.

* :class:`ChurnLoad` — during a run, RATE new UDP connections a second A→B (each from a
  new source port, committed by the stateful ACL, answered by B) and new source MACs
  from A by broadcast ARP (a quarter of RATE, at most 50 a second: FDB learning where the
  pipeline uses ``NORMAL`` for ARP, as the filler pipeline does).  Figures:
  ``churn_per_s`` (achieved), ``churn_delivered`` (share of new connections that reached
  B), ``churn_answered`` (share whose answer came back), ``churn_macs``.
* :func:`ovn_pipeline` — instead of the filler ACL, a private OVN stack
  (:mod:`ovsndu.testing.ovn`) owns the sandbox's br-int: its logical switch, port
  groups with allow-related ACLs and load balancer give the pipeline; its endpoints A
  (10.0.0.1) and B (10.0.0.2) carry the same measured traffic, with the same verdicts
  (A may open connections to B; nothing may open one to A).

The probes are :mod:`ovsndu.testing.workload`'s.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ovsndu.ovs.sandbox import Sandbox, _die_with_parent
from ovsndu.testing.endpoints import Endpoint
from ovsndu.testing.ovn import OvnStack
from ovsndu.testing.workload import read_arrivals, read_counters

CHURN_KEYS = ("churn_per_s", "churn_sent", "churn_delivered", "churn_answered", "churn_macs")
CHURN_PORT = 7300
MAC_RATE_MAX = 50.0
WORKLOAD = "ovsndu.testing.workload"


class ChurnLoad:
    """New connections and new MACs from A at a steady rate, with counters."""

    def __init__(self, a: Endpoint, b: Endpoint, work: Path, rate: float):
        self.a, self.b, self.work, self.rate = a, b, work, rate
        self.mac_rate = min(MAC_RATE_MAX, rate / 4)
        self.procs: list[subprocess.Popen[bytes]] = []

    def _probe(self, ep: Endpoint, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(ep.argv([sys.executable, "-m", WORKLOAD, *args]),
                             preexec_fn=_die_with_parent)  # none outlives its creator
        self.procs.append(p)
        return p

    def start(self) -> None:
        """Receiver first; returns once both senders run."""
        w = self.work
        self.recv = self._probe(self.b, "udp-echo", str(CHURN_PORT), str(w / "churn-recv.txt"))
        time.sleep(0.2)
        self.senders = [
            self._probe(self.a, "udp-churn", self.b.ip, str(CHURN_PORT), str(self.rate),
                        str(w / "churn-sent.txt")),
            self._probe(self.a, "mac-churn", "eth0", str(self.mac_rate),
                        str(w / "churn-macs.txt")),
        ]
        deadline = time.monotonic() + 60
        while not all((w / f).exists() for f in ("churn-sent.txt", "churn-macs.txt")):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"churn probes did not start (see {w})")
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        """Stop the probes (senders first); the figures."""
        for group in (self.senders, [self.recv]):
            for p in group:
                p.send_signal(signal.SIGTERM)
            for p in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
            time.sleep(0.2)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        sent = read_counters(self.work / "churn-sent.txt")
        n = int(sent.get("sent", 0))
        seconds = float(sent.get("seconds", 0))
        delivered = len(read_arrivals(self.work / "churn-recv.txt"))
        return {
            "churn_per_s": n / seconds if seconds else 0.0,
            "churn_sent": n,
            "churn_delivered": delivered / n if n else None,
            "churn_answered": int(sent.get("answered", 0)) / n if n else None,
            "churn_macs": read_counters(self.work / "churn-macs.txt").get("sent", 0),
        }


def churn_text(res: dict[str, Any]) -> str:
    """The churn figures of one run, for the progress line ("" without churn)."""
    if "churn_per_s" not in res:
        return ""
    delivered = res["churn_delivered"]
    return (f"churn {res['churn_per_s']:.0f}/s "
            f"({delivered * 100 if delivered is not None else 0:.1f}% delivered), ")


def ovn_pipeline(sb: Sandbox, work: Path) -> tuple[OvnStack, Endpoint, Endpoint, int]:
    """Start an OVN stack on *sb*; its endpoints A and B, and how many flows br-int holds."""
    stack = OvnStack(sb, work / "ovn")
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack, stack.a, stack.b, len(stack.flows())

