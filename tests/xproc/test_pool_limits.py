"""Resource limits bind each worker alone, from before its first line of application code:
the worker that crosses one dies (or fails the operation), the pool says which limit it was,
counts it as a limit (not a crash), and replaces the worker.

Same rules as ``test_pool_supervisor.py`` (whose helpers and leftovers check these tests
share): real workers, no sleeps, the pool always stopped, nothing left behind.
"""

from __future__ import annotations

import pytest

from zeus.pool import Pool, WorkerLost
from zeus.supervisor.limits import CgroupMemory, Limits

from .test_pool_supervisor import (
    all_ready,
    call,
    config,
    gone,
    messages,
    nothing_left_behind,
    pid_of_answer,
    pool_log,
    run,
    running,
)

__all__ = ["nothing_left_behind", "pool_log"]  # fixtures, used by name

MEMORY = 128 << 20


async def replaced(pool: Pool, old: int) -> int:
    """Wait until the pool's only worker is a new one; its pid."""
    await gone(pool, old)
    (new,) = await all_ready(pool, 1)
    return new


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "limits",
    [Limits(address_space=MEMORY), Limits(memory=MEMORY)],
    ids=["address-space", "memory-without-cgroup"],
)
def test_unbounded_allocation_ends_the_worker_at_its_memory_limit(
    limits: Limits, pool_log: pytest.LogCaptureFixture
) -> None:
    if limits.memory and CgroupMemory.discover() is not None:
        pytest.skip("a writable cgroup v2 enforces memory=; see the cgroup test")

    async def scenario() -> None:
        async with running(config(limits=limits)) as pool:
            (first,) = await all_ready(pool, 1)
            # The worker answers 500 if it still can, then exits with MEMORY_LIMIT; either way
            # it is gone and the request did not hang.
            try:
                status, _ = await call(pool, b"/alloc")
                assert status == 500
            except WorkerLost as lost:
                assert lost.pid == first
            second = await replaced(pool, first)
            assert await pid_of_answer(pool) == second
            restarts = pool.statistics().restarts
            assert (restarts["limit"], restarts["crash"]) == (1, 0), restarts

    run(scenario())
    log = messages(pool_log)
    assert any(
        "exit code 7; cause: limit (memory limit (address space) reached)" in m for m in log
    ), log
    if limits.memory:
        assert any("falls back to RLIMIT_AS" in m for m in log), log


@pytest.mark.timeout(30)
def test_cgroup_memory_max_ends_only_the_worker_that_crossed_it(
    pool_log: pytest.LogCaptureFixture,
) -> None:
    if CgroupMemory.discover() is None:
        pytest.skip("no writable cgroup v2 with the memory controller here (memory.max)")

    async def scenario() -> None:
        async with running(config(limits=Limits(memory=MEMORY))) as pool:
            (first,) = await all_ready(pool, 1)
            with pytest.raises(WorkerLost):
                await call(pool, b"/alloc")
            await replaced(pool, first)
            assert pool.statistics().restarts["limit"] == 1

    run(scenario())
    assert any("cgroup memory.max" in m for m in messages(pool_log))


@pytest.mark.timeout(30)
def test_a_cpu_bound_request_ends_the_worker_at_its_cpu_limit(
    pool_log: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with running(config(limits=Limits(cpu_seconds=1))) as pool:
            (first,) = await all_ready(pool, 1)
            with pytest.raises(WorkerLost) as lost:
                await call(pool, b"/burn")
            assert (lost.value.pid, lost.value.status) == (first, "signal SIGXCPU")
            await replaced(pool, first)
            restarts = pool.statistics().restarts
            assert (restarts["limit"], restarts["crash"]) == (1, 0), restarts

    run(scenario())
    assert any("cause: limit (CPU time limit (1s) reached)" in m for m in messages(pool_log))


@pytest.mark.timeout(30)
def test_a_worker_that_ignores_sigxcpu_is_killed_at_the_hard_cpu_limit_and_counted_as_such(
    pool_log: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with running(config(limits=Limits(cpu_seconds=1))) as pool:
            (first,) = await all_ready(pool, 1)
            with pytest.raises(WorkerLost) as lost:
                await call(pool, b"/burn?ignore-sigxcpu")
            assert lost.value.status == "signal SIGKILL"
            await replaced(pool, first)
            restarts = pool.statistics().restarts
            assert (restarts["limit"], restarts["crash"]) == (1, 0), restarts

    run(scenario())
    assert any("CPU time limit" in m for m in messages(pool_log))


@pytest.mark.timeout(30)
def test_the_open_files_limit_makes_the_app_see_emfile_and_the_worker_survives() -> None:
    async def scenario() -> None:
        async with running(config(limits=Limits(open_files=32))) as pool:
            first = await pid_of_answer(pool)
            status, body = await call(pool, b"/files")
            assert status == 200, body
            word, opened = body.split()
            assert word == b"EMFILE" and 0 < int(opened) < 32
            # The descriptors were closed again: the same worker can do it again.
            assert await call(pool, b"/files") == (status, body)
            assert await pid_of_answer(pool) == first

    run(scenario())
