"""Chaos under load and slow clients, briefly: the fast versions of ``reliability/chaos.py``
and ``reliability/slow.py`` (``make chaos`` and ``make slow`` run the long ones).

Each chaos scenario runs ``zeus serve`` with 4 workers under continuous keep-alive load while
workers die (SIGKILL, a segfault in the app, SIGSTOP, a hang past ``--timeout``, a memory bomb
past ``--memory-limit``): no connection may be reset, and the only failed requests are the
victims' in-flight ones, with the status their fate calls for.
"""

from __future__ import annotations

import argparse
import sys

import pytest

from .helpers import FIGURES, ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reliability import chaos, slow
from reliability.common import new_loop


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", chaos.SCENARIOS)
def test_workers_dying_under_load_fail_only_their_own_requests(scenario: str) -> None:
    """Three blows, half a second apart, under load from 8 connections: no reset, no lost
    request; the failures are at most one per blow, each with the scenario's status; every
    victim is replaced."""
    loop = new_loop()
    try:
        result = loop.run_until_complete(chaos.run_scenario(
            scenario, duration=1.5, interval=0.5, baseline=1.0, connections=8, seed=7,
            settle=0.0))
    finally:
        loop.close()
    FIGURES[f"chaos {scenario}"] = (
        f"{result.blows} blows, {result.requests} requests, failures {result.failed or 0}, "
        f"blow requests {result.blow_outcomes or '-'}, replaced in "
        f"{result.replace_median_s} s (median)")
    assert not result.broken, result.broken
    assert result.blows == 3, "a blow found no worker to hit"


@pytest.mark.timeout(60)
def test_slowloris_and_slow_readers_do_not_slow_a_fast_client() -> None:
    """200 slowloris connections and 20 slow readers of 1 MiB responses: the fast client gets
    only 200s, and the front's private memory stays bounded."""
    args = argparse.Namespace(
        slowloris=200, readers=20, reader_size=1 << 20, drip=0.5, header_timeout=10.0,
        duration=1.5, baseline=0.5, p99_limit=250.0, rss_limit=64.0)
    result = slow.run(args)
    FIGURES["slow clients (200 slowloris + 20 readers)"] = (
        f"fast median {result.median_ms_loaded} ms (alone {result.median_ms_alone} ms), p99 "
        f"{result.p99_ms_loaded} ms; front anonymous RSS {result.front_anon_mib_before} -> "
        f"max {result.front_anon_mib_max} MiB")
    assert not result.broken, result.broken
    assert result.fast_requests_loaded > 0

