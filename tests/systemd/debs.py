"""Debian's own openvswitch-switch/-common .debs, repacked for the apt tests.

The host's apt cache (or the copy scripts/setup downloads into .cache/debs) holds the
installed 3.1 packages; :func:`repack` unpacks one with ``dpkg-deb -R``, bumps its
version (and the -switch package's ``openvswitch-common (= V)`` dependency), optionally
replaces ovs-vswitchd or rewrites the shipped ``vswitch.ovsschema``, and packs it again.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "usr/share/openvswitch/vswitch.ovsschema"
VSWITCHD = "usr/lib/openvswitch-switch/ovs-vswitchd"
OVSDB_SERVER = "usr/sbin/ovsdb-server"
BROKEN_VSWITCHD = """#!/bin/sh
# a broken ovs-vswitchd: it reports its version, and crashes when started
case "$1" in --version) echo "ovs-vswitchd (Open vSwitch) 3.1.0"; exit 0 ;; esac
kill -SEGV $$
"""
SchemaEdit = Callable[[dict[str, Any]], dict[str, Any]]


def cached_deb(package: str) -> Path:
    """The installed version's .deb of *package* (fails in CI, skips elsewhere if absent)."""
    found = sorted(glob.glob(f"/var/cache/apt/archives/{package}_*.deb")
                   + glob.glob(str(ROOT / ".cache" / "debs" / f"{package}_*.deb")))
    if not found:
        why = f"needs a {package} .deb (scripts/setup downloads one into .cache/debs)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and this test {why}")
        pytest.skip(f"{why}; CI is unset, so skipping (in CI this fails)")
    return Path(found[-1])


def newer_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A minor version up with one more column, as a newer OVS release ships."""
    new = copy.deepcopy(schema)
    major, minor, _patch = (int(x) for x in schema["version"].split("."))
    new["version"] = f"{major}.{minor + 1}.0"
    new["tables"]["Bridge"]["columns"]["ovsndu_test"] = {
        "type": {"key": "string", "min": 0, "max": 1}}
    new.pop("cksum", None)
    return new


def unconvertible_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A newer version whose Bridge.name is an integer: no bridge name converts."""
    new = newer_schema(schema)
    major, minor, _patch = (int(x) for x in new["version"].split("."))
    new["version"] = f"{major}.{minor + 1}.0"
    new["tables"]["Bridge"]["columns"]["name"] = {"type": "integer", "mutable": False}
    return new


def _md5sums(tree: Path) -> None:
    """DEBIAN/md5sums again for the files that changed (dpkg does not check it)."""
    md5 = tree / "DEBIAN" / "md5sums"
    lines = []
    for line in md5.read_text().splitlines():
        _sum, path = line.split(None, 1)
        if (tree / path).is_file():
            lines.append(f"{hashlib.md5((tree / path).read_bytes()).hexdigest()}  {path}")
    md5.write_text("\n".join(lines) + "\n")


def repack(deb: Path, dest: Path, suffix: str, *, vswitchd: str | None = None,
           common_suffix: str = "", schema: SchemaEdit | None = None,
           ovsdb_server_tail: bytes = b"") -> Path:
    """*deb* with its version + *suffix*; its dependency on openvswitch-common (= V)
    becomes V + *common_suffix*; *vswitchd* replaces ovs-vswitchd, *schema* rewrites
    the shipped vswitch.ovsschema; *ovsdb_server_tail* is appended to ovsdb-server's
    binary (another binary, as a rebuild makes, that still runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
        control = tree / "DEBIAN" / "control"
        lines = control.read_text().splitlines()
        version = next(ln.split(": ", 1)[1] for ln in lines if ln.startswith("Version: "))
        control.write_text("\n".join(
            f"Version: {version}{suffix}" if ln.startswith("Version: ") else
            ln.replace(f"openvswitch-common (= {version})",
                       f"openvswitch-common (= {version}{common_suffix})")
            for ln in lines) + "\n")
        if vswitchd is not None:
            binary = tree / VSWITCHD
            binary.write_text(vswitchd)
            binary.chmod(0o755)
        if schema is not None:
            path = tree / SCHEMA
            path.write_text(json.dumps(schema(json.loads(path.read_text())), indent=2) + "\n")
        if ovsdb_server_tail:
            server = tree / OVSDB_SERVER
            server.write_bytes(server.read_bytes() + ovsdb_server_tail)
        _md5sums(tree)
        out = dest / f"{deb.name.split('_')[0]}_{version}{suffix}_amd64.deb"
        subprocess.run(["dpkg-deb", "-b", "-Zgzip", str(tree), str(out)], check=True,
                       capture_output=True)
    return out
