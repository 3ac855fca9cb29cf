"""A real supervisor on a private OVS sandbox holding the sample state."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ovsndu.config import Config
from ovsndu.ovs.sandbox import DUMMY_ARGS, Sandbox
from ovsndu.ovs.unixctl import pid_alive
from ovsndu.testing.sample import populate
from tests.conftest import require_ovs

VSWITCHD = shutil.which("ovs-vswitchd") or "/usr/sbin/ovs-vswitchd"


def ovsndu(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ovsndu", *args], capture_output=True,
                          text=True, check=False, timeout=timeout)


@dataclass
class Rig:
    """The sandbox, the supervisor process and its config file."""

    sb: Sandbox
    cfg: Config
    cfg_path: Path
    supervisor: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return ovsndu(args[0], "--config", str(self.cfg_path), *args[1:], timeout=timeout)

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        return json.loads(r.stdout) if r.stdout else {}

    def reload(self, *extra: str) -> tuple[int, dict[str, Any]]:
        r = self.cli("reload", "--json", *extra)
        return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr})

    def vswitchd_pids(self) -> list[int]:
        """Every live ovs-vswitchd using this rundir's database."""
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # Whatever its file name (a copy, a symlink), a vswitchd names the DB as an argument.
            # A DPDK build's standby reaches it through a symlink beside its private
            # rundir (ovs/preinit.py).
            link = f"unix:{self.sb.rundir}/.of-".encode()
            names_db = self.sb.db.encode() in cmd or any(a.startswith(link) for a in cmd)
            ours = names_db and b"python" not in cmd[0] and any(
                a.startswith(b"--pidfile=") for a in cmd)
            if ours and pid_alive(int(entry.name)):
                out.append(int(entry.name))
        return sorted(out)

    def start_supervisor(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.supervisor = subprocess.Popen(
            [sys.executable, "-m", "ovsndu", "supervise", "--config", str(self.cfg_path)],
            stdout=log, stderr=log, env={**os.environ, **self.env})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.supervisor.poll() is not None:
                raise AssertionError(f"supervisor exited: {self.log_path.read_text()[-2000:]}")
            ready = Path(self.cfg.ovsndu.control_socket).exists()
            if ready and self.status().get("phase") == "idle":
                return
            time.sleep(0.1)
        raise AssertionError("supervisor did not become ready")

    def stop_supervisor(self) -> None:
        if self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait()


def live_db_prefix(sb: Sandbox) -> str:
    """What every remote of the live database a vswitchd is given begins with: the
    database's own socket, or the link to it beside a standby's private rundir
    (ovs/preinit.py); a rehearsal's database is elsewhere."""
    return f"unix:{sb.rundir}/"


@contextlib.contextmanager
def make_rig(tmp_path: Path, *, validate: bool = True, timeout: float = 120,
             db_env: str | None = None) -> Iterator[Rig]:
    """A sandbox with the sample state, adopted by a real supervisor.

    *db_env*: the name of an environment variable that tells fake binaries (started by
    the supervisor) the live database's remote, so they can act only there: its prefix,
    :func:`live_db_prefix` (match ``[[ "$1" == "$VAR"* ]]``).
    """
    require_ovs()
    with Sandbox(tmp_path / "run") as sb:
        populate(sb)
        cfg = Config.from_dict({
            "ovs": {"rundir": str(sb.rundir), "db": sb.db, "vswitchd": VSWITCHD,
                    "vswitchd_args": list(DUMMY_ARGS)},
            "upgrade": {"validate": validate, "timeout": timeout},
            "ovsndu": {"state_dir": str(tmp_path / "state")},
        })
        with supervised(sb, cfg, tmp_path, {db_env: live_db_prefix(sb)} if db_env else {}
                        ) as rig:
            yield rig


@contextlib.contextmanager
def supervised(sb: Sandbox, cfg: Config, tmp_path: Path,
               env: dict[str, str] | None = None) -> Iterator[Rig]:
    """*cfg* written into *tmp_path* and a real supervisor started on it (*env* added to
    its environment); at the end it is stopped and every vswitchd of *sb* killed."""
    cfg_path = tmp_path / "ovsndu.toml"
    cfg_path.write_text(cfg.to_toml())
    rig = Rig(sb, cfg, cfg_path, None, tmp_path / "supervisor.log",  # type: ignore[arg-type]
              env or {})
    rig.start_supervisor()
    try:
        yield rig
    finally:
        rig.stop_supervisor()
        for pid in rig.vswitchd_pids():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(name="rig")
def _rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path) as rig:
        yield rig


def fake_binary(tmp_path: Path, name: str, body: str) -> Path:
    """A shell script standing in for a new ovs-vswitchd; ``$REAL`` is the real one."""
    path = tmp_path / name
    path.write_text(f"#!/bin/bash\nREAL={VSWITCHD}\n{body}\n")
    path.chmod(0o755)
    return path
