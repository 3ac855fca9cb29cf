"""One container with a real systemd 252 for the whole module (see container.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.systemd.container import Container, booted, missing_prerequisite


def require_container() -> None:
    """Fail in CI, skip elsewhere, when the container cannot run here."""
    reason = missing_prerequisite()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and this test {reason}")
    pytest.skip(f"{reason}; CI is unset, so skipping (in CI this fails)")


@pytest.fixture(name="box", scope="module")
def _box() -> Iterator[Container]:
    require_container()
    started = time.monotonic()
    with booted() as box:
        print(f"\ncontainer booted in {box.boot_seconds:.2f} s "
              f"(set-up {time.monotonic() - started:.2f} s)")
        yield box
