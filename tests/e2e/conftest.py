"""Fixtures for the end-to-end tests: a real ``zeus serve`` on a free port that never outlives
its test, and a summary of the figures measured on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import FIGURES, Server, ServerSet, StartServer


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start ``zeus serve tests.apps.e2e_native:app`` with extra options and wait until it
    accepts connections with all its workers ready: ``start_server(*options, workers=2)``.

    At teardown each server still running gets SIGTERM and must exit 0 in time, and no worker
    process may be left behind.  ``--graceful-timeout 5`` bounds that unless a test sets it.
    """
    servers = ServerSet(tmp_path)
    try:
        yield servers.start
    finally:
        servers.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default options and two workers, shared by the tests of a module
    that leave it as they found it (tests that change its state start their own)."""
    servers = ServerSet(tmp_path_factory.mktemp("zeus"))
    try:
        yield servers.start()
    finally:
        servers.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("end-to-end figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
