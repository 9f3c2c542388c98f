"""The workers' CPU scheduling policy (``--worker-sched``): SCHED_BATCH unless told otherwise,
so that a worker the front wakes does not preempt the front; the front keeps the normal
policy.  Read from the real processes with sched_getscheduler(2), and each still serves."""

from __future__ import annotations

import os

import pytest

from .helpers import StartServer


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "policy"),
    [((), os.SCHED_BATCH), (("--worker-sched", "normal"), os.SCHED_OTHER)],
    ids=["default-batch", "normal"],
)
def test_workers_run_under_the_chosen_policy(
    start_server: StartServer, args: tuple[str, ...], policy: int
) -> None:
    server = start_server(*args)
    workers = server.workers()
    assert len(workers) == 2
    assert {os.sched_getscheduler(pid) for pid in workers} == {policy}
    assert os.sched_getscheduler(server.pid) == os.SCHED_OTHER
    with server.conn() as c:
        served = {int(c.request("GET", "/pid").body) for _ in range(6)}
    assert served == workers  # both answer, round-robin
