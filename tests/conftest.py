"""Whole-suite checks: the compiled per-request path must match its source.

setup.py compiles the modules of its COMPILED list with mypyc; Python imports a compiled
module in preference to its ``.py``.  A module edited since the last build would be tested in
its old, compiled form, and one dropped from the list would still be imported compiled: the
suite refuses to run in either case.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compiled_modules() -> list[str]:
    """The module names of setup.py's COMPILED list."""
    text = (ROOT / "setup.py").read_text()
    paths = re.findall(r'^    "src/(zeus/[\w/]+)\.py",$', text, flags=re.MULTILINE)
    return [p.replace("/", ".") for p in paths]


def pytest_report_header() -> str:
    names = compiled_modules()
    done = [n for n in names if not (importlib.import_module(n).__file__ or "").endswith(".py")]
    return f"zeus: {len(done)} of {len(names)} per-request modules compiled (mypyc)"


def pytest_sessionstart(session: pytest.Session) -> None:
    listed = {ROOT / "src" / (n.replace(".", "/") + ".py") for n in compiled_modules()}
    for built in (ROOT / "src" / "zeus").rglob("*.cpython-*.so"):
        source = built.with_name(built.name.split(".", 1)[0] + ".py")
        if not source.exists():
            continue  # a hand-written extension (_native, _http)
        if source not in listed:
            pytest.exit(f"{built.relative_to(ROOT)} is not in setup.py's COMPILED list but "
                        f"would be imported instead of {source.name}: delete it", returncode=2)
        if built.stat().st_mtime < source.stat().st_mtime:
            pytest.exit(f"{built.name} is older than {source.relative_to(ROOT)}: the tests "
                        "would run the old compiled code; run `make native`", returncode=2)
