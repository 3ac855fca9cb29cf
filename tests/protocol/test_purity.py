"""The sans-I/O core imports no I/O, clock or logging machinery (walked with ast)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import ovsndu.protocol

FORBIDDEN = {"asyncio", "socket", "subprocess", "structlog", "selectors", "threading", "time",
             "pyroute2", "dbus_fast"}
PACKAGE = Path(ovsndu.protocol.__file__).parent
IO_MODULES = {"transport.py", "session.py"}
IO_NAMES = {f"ovsndu.protocol.{name.removesuffix('.py')}" for name in IO_MODULES}
CORE = sorted(p for p in PACKAGE.glob("*.py") if p.name not in IO_MODULES)


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported by the file at *path*, with their parent packages."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return names | parents


def closure(path: Path) -> dict[str, Path]:
    """Every module reachable from *path* through ovsndu-internal imports, plus the leaves."""
    seen: dict[str, Path] = {}
    todo = [path]
    while todo:
        for name in imports_of(todo.pop()):
            if name in seen:
                continue
            seen[name] = path
            if name.split(".")[0] == "ovsndu" and name not in IO_NAMES:
                spec = importlib.util.find_spec(name)
                assert spec is not None and spec.origin is not None
                todo.append(Path(spec.origin))
    return seen


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    """No core module reaches asyncio, sockets, subprocesses, clocks or structlog."""
    reached = closure(path)
    bad = sorted(name for name in reached if name.split(".")[0] in FORBIDDEN)
    assert not bad, f"{path.name} reaches {bad}"
    assert not IO_NAMES & set(reached)


@pytest.mark.parametrize("name", sorted(IO_MODULES))
def test_io_modules_do_io(name: str) -> None:
    """The walk does see I/O where it belongs (so the test is not vacuous)."""
    assert "asyncio" in imports_of(PACKAGE / name)
