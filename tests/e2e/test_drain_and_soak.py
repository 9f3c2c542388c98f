"""Drain, reload and a short soak under load: the fast versions of ``reliability/drain.py``
and ``reliability/soak.py`` (``make drain`` and ``make soak`` run the long ones)."""

from __future__ import annotations

import asyncio
import random
import sys

import pytest

from .helpers import FIGURES, ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reliability import drain, soak
from reliability.common import Load, Zeus, new_loop, request_bytes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["term", "hup"])
def test_term_and_hup_under_load_fail_no_request(name: str) -> None:
    """Keep-alive and new-connection clients, requests in flight mid-handler at the signal:
    TERM answers every request sent before it and resets nothing (new connections after the
    listener closes are refused); HUP replaces every worker with every request a 200."""
    loop = new_loop()
    try:
        result = loop.run_until_complete(
            drain.run(name, before=1.0, after=0.5, connections=8, seed=3))
    finally:
        loop.close()
    drain.check(result)
    FIGURES[f"{name} under load"] = (
        f"{result.requests} requests, {result.in_flight_at_signal} in flight at the signal; "
        f"before {result.before}, after {result.after}; {result.refused} refused")
    assert not result.broken, result.broken


_MIX = [request_bytes("GET", "/hello"), request_bytes("GET", "/size?65536"),
        request_bytes("POST", "/echo", b"s" * 4096), request_bytes("PUT", "/echo", b"u" * 100),
        request_bytes("DELETE", "/hello")]


def _mix(rng: random.Random) -> tuple[str, bytes]:
    return "soak", rng.choice(_MIX)


@pytest.mark.timeout(60)
def test_a_short_soak_leaks_no_memory_descriptor_or_process() -> None:
    """Mixed sizes and methods for 2 s after a warm-up: the front's and the workers' private
    memory flat, the same descriptors and memfds, no zombie."""
    async def load(port: int, seconds: float) -> Load:
        driver = Load(port, _mix, connections=8, seed=5)
        driver.run()
        await asyncio.sleep(seconds)
        await driver.stop()
        return driver

    loop = new_loop()
    result = soak.Result()
    try:
        with Zeus("--log-level", "info", workers=soak.WORKERS) as zeus:
            idle_fds = len(soak.fds(zeus.pid))  # before any client
            loop.run_until_complete(load(zeus.port, 0.5))
            soak.settle(zeus, idle_fds)
            result.start = soak.Snapshot.take(zeus)
            driver = loop.run_until_complete(load(zeus.port, 2.0))
            soak.settle(zeus, idle_fds)
            result.end = soak.Snapshot.take(zeus)
            assert zeus.stop() == 0
    finally:
        loop.close()
    outcomes = driver.outcomes()
    result.requests = sum(outcomes.values())
    result.non_2xx = result.requests - outcomes["200"]
    result.front_anon_rounds_kib = [result.end.front_anon_kib]
    soak.check(result, slack_mib=8.0, warm_errors=0)
    FIGURES["short soak"] = (
        f"{result.requests} requests; front anonymous RSS {result.start.front_anon_kib} -> "
        f"{result.end.front_anon_kib} KiB, fds {result.start.front_fds} -> "
        f"{result.end.front_fds}, memfds {result.end.front_memfds}")
    assert not result.broken, (result.broken, outcomes)
    assert result.requests > 1000
