"""`apt-get install --reinstall openvswitch-switch` with ovsndu against without it, under
traffic, in the systemd container of tests/systemd (real systemd 252, Debian's units).

    .venv/bin/python -m benchmarks.apt_upgrade [--runs K] [--json OUT]

Per run, one fresh container: the netdev bridge br-t of tests/systemd/test_resilience.py
(veths to two namespaces, 4 forwarding rules + 300 ACL rules), UDP ep1 → ep2 at 500
datagrams/s.  Measured, in this order and in the same container: the longest silence of
a plain ``systemctl reload ovs-vswitchd``; of ``apt-get install --reinstall`` of a
version-bumped repack of Debian's openvswitch-switch with ovsndu installed; then, after
``ovsndu uninstall-systemd`` (Debian's units and package scripts as shipped), of the same
transaction without ovsndu (the preinst stops OVS, the postinst starts it again).  Also
how many of br-t's rules each one kept.  Root, systemd-nspawn and the cached .debs as for
the container tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from tests.systemd.container import Container, booted, missing_prerequisite
from tests.systemd.debs import cached_deb, repack
from tests.systemd.test_resilience import SETUP, Traffic

UNIT = "ovs-vswitchd.service"
CONFIG = """\
[ovs]
vswitchd = "/usr/sbin/ovs-vswitchd"
vswitchd_args = ["--disable-system"]

[upgrade]
timeout = 120
"""


def _rules(box: Container) -> int:
    out = box.run("ovs-ofctl", "dump-flows", "br-t", "--no-stats").stdout
    return len([ln for ln in out.splitlines() if " reply " not in ln and ln.strip()])


def _silence(box: Container, action: Any) -> dict[str, float]:
    with Traffic(box) as traffic:
        time.sleep(0.5)
        t0 = time.monotonic()
        action()
        took = time.monotonic() - t0
        time.sleep(2.0)
    sent, received = traffic.result()
    arrivals = sorted(float(line.split()[1]) for line in
                      (box.merged / "root/recv").read_text().splitlines() if line.strip())
    gap = max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)
    return {"gap_ms": round(gap * 1000, 1), "lost": sent - received, "sent": sent,
            "seconds": round(took, 2), "rules_after": _rules(box)}


def _apt(box: Container, deb: str) -> None:
    box.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
            "--reinstall", "--no-install-recommends", "-o",
            "Dpkg::Options::=--force-confold", deb, timeout=600)


def one_run(index: int, debs: Path) -> dict[str, Any]:
    """One container: reload, apt with ovsndu, apt without."""
    with booted(f"ovsndu-bench-apt-{index}") as box:
        (box.merged / "usr/sbin/policy-rc.d.ovsndu-chained").unlink(missing_ok=True)
        box.run("sh", "-c", "! dpkg -s openvswitch-switch-dpdk >/dev/null 2>&1 || "
                            "dpkg -r openvswitch-switch-dpdk", timeout=300)
        deb = "/root/debs/" + debs.name
        (box.merged / "root/debs").mkdir(parents=True, exist_ok=True)
        (box.merged / "root/debs" / debs.name).write_bytes(debs.read_bytes())
        box.write("/etc/ovsndu/ovsndu.toml", CONFIG)
        box.run("systemctl", "restart", UNIT, timeout=300)
        box.run("systemctl", "start", "openvswitch-switch", timeout=300)
        box.run("sh", "-c", SETUP)
        rules = _rules(box)
        out: dict[str, Any] = {"rules_before": rules}
        out["reload"] = _silence(box, lambda: box.run("systemctl", "reload", UNIT,
                                                      timeout=300))
        out["apt_ovsndu"] = _silence(box, lambda: _apt(box, deb))
        box.ovsndu("uninstall-systemd")
        box.run("systemctl", "daemon-reload")
        out["apt_stock"] = _silence(box, lambda: _apt(box, deb))
        print(json.dumps(out), flush=True)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    why = missing_prerequisite()
    if why:
        raise SystemExit(f"apt_upgrade: {why}")
    work = Path("/tmp") / f"ovsndu-bench-apt-{time.time_ns()}"
    work.mkdir()
    try:
        deb = repack(cached_deb("openvswitch-switch"), work, "+ovsndu1")
        runs = [one_run(i, deb) for i in range(args.runs)]
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    print(f"\n{'':28} {'longest gap (median, all)':>36} {'rules kept':>12}")
    summary: dict[str, Any] = {}
    for key, label in (("reload", "systemctl reload (ovsndu)"),
                       ("apt_ovsndu", "apt --reinstall, ovsndu"),
                       ("apt_stock", "apt --reinstall, stock")):
        gaps = [r[key]["gap_ms"] for r in runs]
        kept = [f"{r[key]['rules_after']}/{r['rules_before']}" for r in runs]
        summary[key] = statistics.median(gaps)
        print(f"{label:28} {summary[key]:>9.0f} ms  {gaps!s:>24} {', '.join(kept):>12}")
    print(f"\napt with ovsndu / reload: {summary['apt_ovsndu'] / summary['reload']:.2f}x; "
          f"apt with ovsndu / stock: {summary['apt_ovsndu'] / summary['apt_stock']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median_gap_ms": summary}, indent=2))


if __name__ == "__main__":
    main()
