"""The ``zeus`` command line: help that lists the options, and mistakes (an application that
cannot be imported, a bad option value, a port in use) reported in one line with a non-zero
exit status and never a traceback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from .helpers import APP, ROOT, ZEUS, free_port

OPTIONS = [
    "--bind", "--workers", "--timeout", "--graceful-timeout", "--keep-alive", "--header-timeout",
    "--body-timeout", "--max-body-size", "--region-size", "--max-requests", "--access-log",
    "--limit-request-line", "--limit-request-fields", "--limit-request-field-size",
]


def zeus(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ZEUS), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _no_traceback(out: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in out.stderr + out.stdout
    assert 'File "' not in out.stderr


@pytest.mark.timeout(30)
def test_help_lists_the_commands() -> None:
    out = zeus("--help")
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout and "run" in out.stdout


@pytest.mark.timeout(30)
def test_serve_help_lists_the_options() -> None:
    out = zeus("serve", "--help")
    assert out.returncode == 0, out.stderr
    missing = [o for o in OPTIONS if o not in out.stdout]
    assert missing == [], missing


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("spec", "says"), [
    ("nosuchmodule:app", "nosuchmodule"),
    ("tests.apps.e2e_native:nosuchattr", "nosuchattr"),
    ("nocolon", "module:attribute"),
])
def test_app_that_cannot_be_loaded_is_a_one_line_error(spec: str, says: str) -> None:
    out = zeus("serve", spec, "--bind", f"127.0.0.1:{free_port()}")
    assert out.returncode != 0
    _no_traceback(out)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("zeus: error:") and says in lines[0]


@pytest.mark.timeout(30)
def test_app_whose_import_raises_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text(
        "import json\nraise RuntimeError('broken at import time')\n"
    )
    (tmp_path / "missing_dep.py").write_text("import no_such_dependency_xyz\napp = None\n")
    for spec, says in (("broken_app:app", "broken at import time"),
                       ("missing_dep:app", "no_such_dependency_xyz")):
        out = zeus("serve", spec, "--chdir", str(tmp_path), "--bind",
                   f"127.0.0.1:{free_port()}")
        assert out.returncode != 0
        _no_traceback(out)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], out.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("option", "value", "says"), [
    ("--workers", "0", "must be at least 1"),
    ("--workers", "two", "invalid integer"),
    ("--timeout", "-1", "must be >= 0"),
    ("--max-body-size", "lots", "invalid size"),
    ("--bind", "127.0.0.1:notaport", "invalid bind"),
])
def test_bad_option_value_exits_2_with_an_error_line(option: str, value: str, says: str) -> None:
    out = zeus("serve", APP, option, value)
    assert out.returncode == 2
    _no_traceback(out)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("zeus serve: error:") and says in last and option in last, last


@pytest.mark.timeout(30)
def test_bad_option_value_is_a_single_line() -> None:
    out = zeus("serve", APP, "--workers", "0")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.timeout(30)
def test_port_in_use_is_an_error_without_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = zeus("serve", APP, "--bind", f"127.0.0.1:{port}", "--workers", "1")
    assert out.returncode == 2
    _no_traceback(out)
    errors = [line for line in out.stderr.splitlines() if "cannot bind" in line]
    assert len(errors) == 1, out.stderr
