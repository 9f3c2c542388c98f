"""Fixtures for cross-process tests: peers that never outlive their test, and a summary of the
figures measured on this machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import FIGURES, Peers


@pytest.fixture
def peers() -> Iterator[Peers]:
    """Start peer programs; whatever is left is killed and reaped at teardown."""
    p = Peers()
    try:
        yield p
    finally:
        p.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("cross-process figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
