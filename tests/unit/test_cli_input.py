"""CLI input that must end in one line and exit 2, never a traceback (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("command", [["diff", "{f}", "{f}"],
                                     ["restore", "--rundir", "{d}", "--db", "unix:{d}/db.sock",
                                      "{f}"]])
def test_deeply_nested_json_is_one_line(tmp_path: Path, command: list[str]) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    argv = [a.format(f=deep, d=tmp_path) for a in command]
    r = subprocess.run([sys.executable, "-m", "ovsndu", *argv], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr[-500:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nested too deeply" in r.stderr
