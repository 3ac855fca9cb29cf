"""Shared fixtures: real OVS sandboxes, and the CI rule for missing prerequisites.

A test that needs OVS, root or namespaces calls ``require_ovs()``: it skips
(saying why) only when ``CI`` is unset; in CI a missing prerequisite fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from ovsndu.ovs.sandbox import Sandbox
from ovsndu.testing.sample import populate


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt install openvswitch-switch iproute2)"
    return None


def require_ovs() -> None:
    """Fail in CI, skip elsewhere, when real OVS cannot run here."""
    reason = _missing_prerequisite()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and this test {reason}")
    pytest.skip(f"{reason}; CI is unset, so skipping (in CI this fails)")


@pytest.fixture(name="sandbox")
def _sandbox() -> Iterator[Sandbox]:
    """An empty private OVS on the dummy datapath."""
    require_ovs()
    with Sandbox() as sb:
        yield sb


@pytest.fixture(name="populated", scope="module")
def _populated() -> Iterator[Sandbox]:
    """A private OVS holding the sample state in every category (shared by a module)."""
    require_ovs()
    with Sandbox() as sb:
        populate(sb)
        yield sb


_GROUP_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each test's setup, call and teardown time to its group (tests/<group>/)."""
    parts = report.nodeid.split("/")
    group = parts[1] if len(parts) > 2 else "tests"
    _GROUP_SECONDS[group] = _GROUP_SECONDS.get(group, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How long each group took, heaviest first (CI has a time budget)."""
    if _GROUP_SECONDS:
        terminalreporter.section("time per test group")
        for group, seconds in sorted(_GROUP_SECONDS.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"tests/{group}: {seconds:7.1f} s")
