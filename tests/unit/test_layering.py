"""The layering of DESIGN.md §7, enforced on the import statements of the source tree.

- ``zeus.core`` is sans-IO: it imports nothing that does I/O or reads a clock.
- The C extension is only used by the channel layer and the supervisor's process mechanism.
- Adapters know WSGI/ASGI and the worker API, not rings, arenas or regions.
- The supervisor knows processes, never requests: it imports neither the pool nor the front.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "zeus"

IO_MODULES = {
    "os", "socket", "asyncio", "time", "select", "selectors", "mmap", "subprocess", "signal",
    "threading", "fcntl", "uvloop", "httptools",
}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def test_the_layers_exist() -> None:
    """The checks below look at real files (an empty glob would make them pass vacuously)."""
    for package in ("core", "adapters", "supervisor", "front", "pool", "worker"):
        assert modules(package), package


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_does_no_io(path: Path) -> None:
    """zeus.core computes; it never touches the OS, a socket, an event loop or a clock."""
    names = imports_of(path)
    bad = {name for name in names if name.split(".")[0] in IO_MODULES}
    bad |= {name for name in names if name.startswith("zeus._native")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("adapters"), ids=lambda p: p.name)
def test_adapters_do_not_know_rings(path: Path) -> None:
    """Adapters speak WSGI/ASGI to the app and the worker API to Zeus: no rings or regions."""
    forbidden = ("zeus.core.ring", "zeus.core.arena", "zeus.core.layout.Word", "zeus.region",
                 "zeus._native", "zeus.pool", "zeus.front")
    bad = {n for n in imports_of(path) if n.startswith(forbidden)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("supervisor"), ids=lambda p: p.name)
def test_supervisor_knows_processes_not_requests(path: Path) -> None:
    """The supervisor's policy and mechanism never see a request, a response or HTTP."""
    forbidden = ("zeus.pool", "zeus.front", "zeus.core.codec", "zeus.worker", "zeus.adapters",
                 "zeus.channel", "zeus.aiochannel")
    bad = {n for n in imports_of(path) if n.startswith(forbidden)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_only_the_channel_layer_and_process_mechanism_use_the_c_extension() -> None:
    """Native code is mechanism: only these modules call into it directly."""
    allowed = {"region.py", "channel.py", "limits.py"}
    users = {
        p.name for p in SRC.rglob("*.py")
        if any(n == "zeus._native" or n.startswith("zeus._native") for n in imports_of(p))
    }
    assert users <= allowed, sorted(users - allowed)
    assert users, "the channel must use the C extension"
