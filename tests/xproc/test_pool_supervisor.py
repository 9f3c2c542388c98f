"""The pool supervises real worker processes: whatever a worker does, the pool survives it,
fails only the requests that worker had taken, and brings a replacement up.

Each test drives a ``Pool`` of real workers running ``tests/apps/misbehaving.py`` (as an
application, or as a worker program of its own) from a fresh event loop, stops the pool in a
``finally``, and then checks that nothing outlived it: no zombie children, no descriptor the
test did not start with, no region still mapped, nothing left in /dev/shm.  Nothing sleeps to
synchronise: tests await conditions (``wait_until``) or handshakes (the application creates
``busy-PID`` in a state directory once it has taken a long request).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import pytest

from zeus.core.codec import RequestHead
from zeus.errors import ZeusError
from zeus.pool import (
    BootFailure,
    Overloaded,
    Pool,
    PoolConfig,
    RequestTimeout,
    WorkerLost,
    WState,
    worker_argv,
)
from zeus.pool.config import PREFETCH_BUDGET, PREFETCH_MAX, PREFETCH_MIN
from zeus.supervisor.balancer import Balance
from zeus.supervisor.policy import RecyclePolicy, RestartPolicy

ROOT: Final = Path(__file__).resolve().parents[2]
APP: Final = "tests.apps.misbehaving:app"
ENV: Final = {"PYTHONPATH": str(ROOT)}
POOL_LOG: Final = "zeus.pool"


# ---------------------------------------------------------------------- helpers


def program(mode: str) -> list[str]:
    """``tests/apps/misbehaving.py`` run as a worker program of its own."""
    return [sys.executable, "-m", "tests.apps.misbehaving", mode]


def config(argv: list[str] | None = None, **overrides: Any) -> PoolConfig:
    """A small, fast pool of the misbehaving application (overridable field by field)."""
    base = PoolConfig(
        argv or worker_argv(APP, "native"),
        workers=1,
        timeout=20.0,
        kill_grace=1.0,
        graceful_timeout=3.0,
        queue_timeout=10.0,
        boot_timeout=10.0,
        region_size=4 << 20,
        slots=64,
        env=dict(ENV),
        tick=0.1,
    )
    return replace(base, **overrides)


async def call(pool: Pool, target: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request through the pool: its status and whole body."""
    ex = await pool.submit(RequestHead(b"GET", target), body)
    head = await ex.response()
    out = bytearray()
    while (chunk := await ex.next_chunk()) is not None:
        out += chunk.data
        chunk.release()
    return head.status, bytes(out)


async def pid_of_answer(pool: Pool) -> int:
    """The pid of the worker that answers a ``/pid`` request."""
    status, body = await call(pool, b"/pid")
    assert status == 200, body
    return int(body)


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Await ``predicate()`` becoming true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        await asyncio.sleep(0.01)


def ready_pids(pool: Pool) -> set[int]:
    """Pids of the workers that are ready and not retiring."""
    return {w.pid for w in pool.workers if w.state is WState.READY and w.retire_reason is None}


async def all_ready(pool: Pool, n: int, timeout: float = 10.0) -> set[int]:
    """Wait until exactly ``n`` workers are ready and no other is known; their pids."""
    await wait_until(
        lambda: len(ready_pids(pool)) == n and len(pool.workers) == n, timeout,
        f"{n} ready workers",
    )
    return ready_pids(pool)


@contextlib.asynccontextmanager
async def running(cfg: PoolConfig, *, wait_ready: bool = True) -> AsyncIterator[Pool]:
    """A started pool, always stopped on the way out (gracefully, within its
    ``graceful_timeout``: a test leaves no request running unless it failed)."""
    pool = Pool(cfg)
    try:
        await pool.start(wait_ready=wait_ready)
        yield pool
    finally:
        await pool.stop()


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """Run one scenario in a fresh event loop."""
    asyncio.run(scenario)


async def gone(pool: Pool, pid: int, timeout: float = 10.0) -> None:
    """Wait until worker ``pid`` has left the pool."""
    await wait_until(
        lambda: pid not in {w.pid for w in pool.workers}, timeout, f"worker {pid} gone"
    )


async def busy_pid(state: Path, timeout: float = 10.0) -> int:
    """Wait for a worker to announce it took a ``/sleep`` request; its pid."""
    await wait_until(lambda: any(state.glob("busy-*")), timeout, "a worker taking /sleep")
    (marker,) = state.glob("busy-*")
    marker.unlink()
    return int(marker.name.removeprefix("busy-"))


class Load:
    """Clients that send ``/pid`` requests back to back until told to stop.

    Every outcome is kept: the pids that answered, in order, and every failure.
    """

    def __init__(self, pool: Pool, clients: int) -> None:
        self.pool = pool
        self.pids: list[int] = []
        self.failures: list[BaseException | tuple[int, bytes]] = []
        self._stop = False
        self._tasks = [asyncio.create_task(self._client()) for _ in range(clients)]

    async def _client(self) -> None:
        while not self._stop:
            try:
                status, body = await call(self.pool, b"/pid")
            except Exception as exc:
                self.failures.append(exc)
                continue
            if status == 200:
                self.pids.append(int(body))
            else:
                self.failures.append((status, body))

    @property
    def done(self) -> int:
        return len(self.pids) + len(self.failures)

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)


# ------------------------------------------------------------ leftovers check


def fd_table() -> dict[int, str]:
    """This process's descriptors and what they point to."""
    table = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            table[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return table


def children() -> dict[int, str]:
    """This process's children and their states (R, S, Z...)."""
    me = str(os.getpid())
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found[int(entry)] = fields[0]
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After each test: no zombies or surviving workers, no leaked descriptors, no region
    mapped, nothing in /dev/shm."""
    before = fd_table()
    yield
    # A dead worker's region can stay mapped until the cyclic GC runs (see
    # test_a_dead_workers_region_is_unmapped_once_its_last_chunk_is_released): collect first,
    # so that this check finds what is really leaked, not what is merely uncollected yet.
    gc.collect()
    kids = children()
    assert not [pid for pid, st in kids.items() if st == "Z"], f"zombie children: {kids}"
    assert not kids, f"children outlived the pool: {kids}"
    leaked = {fd: t for fd, t in fd_table().items() if before.get(fd) != t}
    assert not leaked, f"descriptors leaked: {leaked}"
    with open("/proc/self/maps") as f:
        mapped = [line for line in f if "memfd:zeus" in line]
    assert not mapped, f"regions still mapped: {mapped}"
    assert os.listdir("/dev/shm") == [], f"left in /dev/shm: {os.listdir('/dev/shm')}"


@pytest.fixture
def pool_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Records of logger ``zeus.pool`` from INFO up."""
    caplog.set_level(logging.INFO, logger=POOL_LOG)
    return caplog


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == POOL_LOG]


# ------------------------------------------------------------- dying workers


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("path", "status"),
    [(b"/segv", "signal SIGSEGV"), (b"/exit?13", "exit code 13")],
    ids=["segfault", "os._exit"],
)
def test_a_worker_that_dies_in_a_request_fails_it_and_is_replaced(
    path: bytes, status: str
) -> None:
    async def scenario() -> None:
        async with running(config()) as pool:
            (first,) = await all_ready(pool, 1)
            with pytest.raises(WorkerLost) as lost:
                await call(pool, path)
            assert (lost.value.pid, lost.value.status) == (first, status)
            (second,) = await all_ready(pool, 1)
            assert second != first
            assert await pid_of_answer(pool) == second
            assert pool.statistics().restarts["crash"] == 1

    run(scenario())


@pytest.mark.timeout(30)
def test_a_request_that_runs_forever_times_out_and_its_worker_is_replaced(
    pool_log: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with running(config(timeout=1.0, kill_grace=0.5)) as pool:
            (first,) = await all_ready(pool, 1)
            started = time.monotonic()
            with pytest.raises(RequestTimeout):
                await call(pool, b"/burn")
            assert 0.9 <= time.monotonic() - started < 3.0
            # /burn ignores the worker's graceful TERM: only the SIGKILL after kill_grace ends it.
            (second,) = await all_ready(pool, 1)
            assert second != first
            assert await pid_of_answer(pool) == second
            assert pool.statistics().restarts["timeout"] == 1

    run(scenario())
    assert any("timed out" in m for m in messages(pool_log))
    assert any("signal SIGKILL; cause: timeout" in m for m in messages(pool_log))


@pytest.mark.timeout(30)
def test_an_exception_in_the_handler_is_a_500_and_the_same_worker_keeps_serving() -> None:
    async def scenario() -> None:
        async with running(config()) as pool:
            first = await pid_of_answer(pool)
            status, body = await call(pool, b"/raise")
            assert status == 500
            assert b"Traceback" not in body and b"on purpose" not in body
            assert await pid_of_answer(pool) == first
            assert pool.statistics().restarts == dict.fromkeys(pool.statistics().restarts, 0)

    run(scenario())


@pytest.mark.timeout(30)
def test_stop_ends_a_worker_that_ignores_sigterm_by_escalating_to_sigkill(
    pool_log: pytest.LogCaptureFixture,
) -> None:
    graceful = 1.0

    async def scenario() -> None:
        pool = Pool(config(program("ignore-term"), workers=2, graceful_timeout=graceful))
        try:
            await pool.start()
            await all_ready(pool, 2)
            await pid_of_answer(pool)
        finally:
            started = time.monotonic()
            await pool.stop()
            took = time.monotonic() - started
        assert graceful * 0.9 <= took < graceful + 1.5, took
        assert not pool.workers

    run(scenario())
    exits = [m for m in messages(pool_log) if "exited" in m]
    assert len(exits) == 2 and all("signal SIGKILL" in m for m in exits), exits


@pytest.mark.timeout(30)
def test_kill_9_during_a_request_fails_only_that_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = config(workers=2, env={**ENV, "MISBEHAVING_STATE": str(tmp_path)})
        async with running(cfg) as pool:
            await all_ready(pool, 2)
            long = asyncio.create_task(call(pool, b"/sleep?20"))
            victim = await busy_pid(tmp_path)
            others = [asyncio.create_task(call(pool, b"/pid")) for _ in range(6)]
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(WorkerLost) as lost:
                await long
            assert (lost.value.pid, lost.value.status) == (victim, "signal SIGKILL")
            answers = await asyncio.gather(*others)
            assert all(status == 200 for status, _ in answers), answers
            assert victim not in {int(body) for _, body in answers}
            pids = await all_ready(pool, 2)
            assert victim not in pids
            assert pool.statistics().restarts["crash"] == 1

    run(scenario())


@pytest.mark.timeout(30)
def test_requests_a_dead_worker_never_took_from_its_ring_are_retried_elsewhere(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        cfg = config(
            workers=1, concurrency=1, prefetch=2, env={**ENV, "MISBEHAVING_STATE": str(tmp_path)}
        )
        async with running(cfg) as pool:
            long = asyncio.create_task(call(pool, b"/sleep?20"))
            victim = await busy_pid(tmp_path)
            queued = [asyncio.create_task(call(pool, b"/pid")) for _ in range(2)]
            # Both wait in the busy worker's ring (its prefetch), none in the pool's queue.
            await wait_until(
                lambda: pool.statistics().in_flight == 3, 5, "two requests queued on the worker"
            )
            stats = pool.statistics()
            assert stats.queued == 0
            assert [(w.pid, w.in_flight) for w in stats.workers] == [(victim, 3)]
            pool.scale(+1)
            (other,) = await all_ready(pool, 2) - {victim}
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(WorkerLost):
                await long
            answers = await asyncio.gather(*queued)
            assert [status for status, _ in answers] == [200, 200]
            answered = {int(body) for _, body in answers}
            assert victim not in answered
            assert answered <= {other} | ready_pids(pool)

    run(scenario())


@pytest.mark.timeout(30)
def test_a_queued_request_whose_body_was_still_being_sent_is_retried_not_failed(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        cfg = config(workers=1, prefetch=2, env={**ENV, "MISBEHAVING_STATE": str(tmp_path)})
        async with running(cfg) as pool:
            long = asyncio.create_task(call(pool, b"/sleep?20"))
            victim = await busy_pid(tmp_path)
            # 3 MiB cannot fit the 2 MiB request arena while the worker sleeps: the send
            # blocks once the head and the first chunks are in.
            big = asyncio.create_task(call(pool, b"/pid", b"x" * (3 << 20)))
            await wait_until(
                lambda: pool.statistics().workers[0].arena_in_use > 0, 5, "body partly sent"
            )
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(WorkerLost):
                await long
            status, body = await big
            assert status == 200 and int(body) != victim

    run(scenario())


@pytest.mark.timeout(30)
def test_requests_prefetched_behind_a_timed_out_request_are_retried_elsewhere(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        cfg = config(
            workers=1, prefetch=2, timeout=1.0, kill_grace=0.5,
            env={**ENV, "MISBEHAVING_STATE": str(tmp_path)},
        )
        async with running(cfg) as pool:
            long = asyncio.create_task(call(pool, b"/sleep?20"))
            victim = await busy_pid(tmp_path)
            queued = [asyncio.create_task(call(pool, b"/pid")) for _ in range(2)]
            with pytest.raises(RequestTimeout):
                await long
            answers = await asyncio.gather(*queued, return_exceptions=True)
            assert all(isinstance(a, tuple) and a[0] == 200 for a in answers), answers
            assert victim not in {int(a[1]) for a in answers if isinstance(a, tuple)}

    run(scenario())


@pytest.mark.timeout(30)
def test_a_whole_answer_sent_just_before_the_worker_exits_is_delivered() -> None:
    async def scenario() -> None:
        async with running(config()) as pool:
            for _ in range(2):
                (first,) = await all_ready(pool, 1)
                assert await call(pool, b"/answer-then-exit") == (200, b"answer")
                await gone(pool, first)

    run(scenario())


def region_traces(name: str) -> list[str]:
    """Descriptors and mappings of this process that refer to the memfd ``name``."""
    fds = [t for t in fd_table().values() if t.startswith(f"/memfd:{name} ")]
    with open("/proc/self/maps") as f:
        return fds + [line.strip() for line in f if f"/memfd:{name} " in line]


@pytest.mark.timeout(30)
def test_a_dead_workers_region_is_unmapped_once_its_last_chunk_is_released() -> None:
    left: list[str] = []

    async def scenario() -> None:
        async with running(config()) as pool:
            (w,) = pool.workers
            region = f"zeus-worker-{w.index}"
            assert region_traces(region)
            ex = await pool.submit(RequestHead(b"GET", b"/answer-then-exit"), b"")
            assert (await ex.response()).status == 200
            await gone(pool, w.pid)  # the pool saw the exit before the body was read
            chunk = await ex.next_chunk()
            assert chunk is not None and bytes(chunk.data) == b"answer"
            chunk.release()
            assert await ex.next_chunk() is None
            left.extend(region_traces(region))

    gc.disable()  # the point: without a cyclic collection, nothing frees the mapping
    try:
        run(scenario())
    finally:
        gc.enable()
    # Checked out here, so that the failure holds no reference to the pool or the region.
    assert left == [], "the dead worker's region is still open and mapped"


# --------------------------------------------------------------- failing to boot


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("app", "env"),
    [("tests.apps.nosuch:app", {}), (APP, {"MISBEHAVING_BOOT": "raise"})],
    ids=["missing-module", "import-raises"],
)
def test_an_app_that_cannot_boot_halts_the_pool_promptly_without_restarting(
    app: str, env: dict[str, str], pool_log: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        pool = Pool(config(worker_argv(app, "native"), workers=2, env={**ENV, **env}))
        started = time.monotonic()
        try:
            with pytest.raises(BootFailure):
                await pool.start()
            assert time.monotonic() - started < 5.0
            assert not pool.workers
        finally:
            await pool.stop(graceful=False)

    run(scenario())
    log = messages(pool_log)
    assert sum(m.startswith("started worker") for m in log) == 2, log
    assert any("failed to boot" in m for m in log), log


@pytest.mark.timeout(30)
def test_a_crash_loop_restarts_with_growing_back_off_and_says_so(
    pool_log: pytest.LogCaptureFixture,
) -> None:
    restart = RestartPolicy(
        backoff_initial=0.1, backoff_max=1.0, min_uptime=5.0, crash_loop_window=30.0,
        crash_loop_max=4,
    )
    # Back-off after each death: 0.1, 0.2, 0.4, 0.8 s; the fifth early death within the window
    # is a crash loop, and the back-off jumps to its maximum.
    expected = [0.1, 0.2, 0.4, 0.8, 1.0]

    async def scenario() -> None:
        cfg = config(program("exit-after-connect"), workers=1, restart=restart)
        async with running(cfg, wait_ready=False) as pool:
            await wait_until(
                lambda: pool.statistics().restarts["crash"] > len(expected), 20,
                f"{len(expected) + 1} crashes",
            )
            assert not pool.halted.done(), "a crash loop is not a boot failure"

    run(scenario())
    # The back-off is the gap between a worker's exit and the start of the next one.
    gaps = []
    exited_at: float | None = None
    for r in pool_log.records:
        msg = r.getMessage()
        if "exited" in msg:
            exited_at = r.created
        elif msg.startswith("started worker") and exited_at is not None:
            gaps.append(r.created - exited_at)
            exited_at = None
    assert len(gaps) >= len(expected), gaps
    for gap, want in zip(gaps, expected, strict=False):
        assert want * 0.9 <= gap < want + 0.5, f"back-off {gaps}, expected {expected}"
    assert gaps[:4] == sorted(gaps[:4]), f"back-off does not grow: {gaps}"
    crashes = [m for m in messages(pool_log) if "cause: crash" in m]
    loop = [m for m in messages(pool_log) if "crash loop" in m]
    assert len(loop) == len(crashes) - restart.crash_loop_max, loop


# ------------------------------------------------------------------- recycling


@pytest.mark.timeout(60)
def test_recycling_by_request_count_under_load_fails_no_request() -> None:
    total, generations = 300, 3

    async def scenario() -> None:
        recycle = RecyclePolicy(max_requests=20, max_requests_jitter=5)
        async with running(config(workers=2, recycle=recycle)) as pool:
            first = await all_ready(pool, 2)
            load = Load(pool, clients=4)
            # A retiring worker serves on until its replacement is ready, so how many
            # generations a few hundred requests see depends on boot time: wait for both.
            await wait_until(
                lambda: load.done >= total and len(set(load.pids)) >= 2 * generations, 40,
                f"{total} requests and {generations} generations of workers",
            )
            await load.stop()
            assert load.failures == []
            assert not first & ready_pids(pool)
            # A worker retires only once it has served its limit: at least max_requests.
            served = Counter(load.pids)
            current = {w.pid for w in pool.workers}
            retired = {pid: n for pid, n in served.items() if pid not in current}
            assert retired and all(n >= 20 for n in retired.values()), served
            assert pool.statistics().restarts["recycle"] >= len(retired)
            assert pool.statistics().restarts["crash"] == 0

    run(scenario())


@pytest.mark.timeout(60)
def test_recycling_by_lifetime_under_load_fails_no_request() -> None:
    async def scenario() -> None:
        recycle = RecyclePolicy(max_lifetime=1.0)
        async with running(config(workers=2, recycle=recycle)) as pool:
            first = await all_ready(pool, 2)
            load = Load(pool, clients=3)
            await wait_until(lambda: len(set(load.pids)) >= 5, 20, "two rounds of recycling")
            await load.stop()
            assert load.failures == []
            assert not first & {w.pid for w in pool.workers}

    run(scenario())


@pytest.mark.timeout(60)
def test_rolling_reload_under_load_replaces_every_worker_and_fails_no_request() -> None:
    async def scenario() -> None:
        async with running(config(workers=3)) as pool:
            old = await all_ready(pool, 3)
            load = Load(pool, clients=4)
            await wait_until(lambda: load.done >= 50, 10, "load before the reload")
            pool.reload()
            new = await all_ready(pool, 3)
            assert not old & new
            mark = load.done
            await wait_until(lambda: load.done >= mark + 50, 10, "load after the reload")
            await load.stop()
            assert load.failures == []
            assert set(load.pids[-20:]) <= new

    run(scenario())


@pytest.mark.timeout(30)
def test_a_retiring_worker_whose_replacement_failed_is_still_retired_later(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"

    async def scenario() -> None:
        cfg = config(
            workers=1, recycle=RecyclePolicy(max_requests=5),
            env={**ENV, "MISBEHAVING_BROKEN_WHILE": str(broken)},
        )
        async with running(cfg) as pool:
            (first,) = await all_ready(pool, 1)
            broken.touch()  # the next workers cannot boot (a bad deployment)
            for _ in range(5):
                assert await pid_of_answer(pool) == first
            await wait_until(
                lambda: pool.statistics().restarts["boot_failure"] >= 1, 10,
                "the replacement failing to boot",
            )
            assert await pid_of_answer(pool) == first  # the old one still serves meanwhile
            broken.unlink()  # fixed: the next worker boots and the retiring one can go
            await wait_until(
                lambda: first not in {w.pid for w in pool.workers}, 3, "the old worker retired"
            )
            await all_ready(pool, 1)

    run(scenario())


# ------------------------------------------------------------------- balancing


@pytest.mark.timeout(30)
def test_round_robin_spreads_sequential_requests_evenly() -> None:
    async def scenario() -> None:
        async with running(config(workers=3, balance=Balance.ROUND_ROBIN)) as pool:
            pids = await all_ready(pool, 3)
            counts = Counter([await pid_of_answer(pool) for _ in range(31)])
            assert set(counts) == pids
            assert max(counts.values()) - min(counts.values()) <= 1, counts

    run(scenario())


@pytest.mark.timeout(30)
def test_least_conn_sends_new_requests_to_the_idle_worker(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = config(
            workers=2, balance=Balance.LEAST_CONN, env={**ENV, "MISBEHAVING_STATE": str(tmp_path)}
        )
        async with running(cfg) as pool:
            pids = await all_ready(pool, 2)
            long = asyncio.create_task(call(pool, b"/sleep?2"))
            busy = await busy_pid(tmp_path)
            answers = [await pid_of_answer(pool) for _ in range(6)]
            assert not long.done(), "the long request must still be running"
            assert answers == [(pids - {busy}).pop()] * 6
            assert await long == (200, f"slept-{busy}".encode())

    run(scenario())


# -------------------------------------------------------------------- overload


@pytest.mark.timeout(30)
def test_requests_beyond_the_queue_fail_with_overloaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = config(
            workers=1, prefetch=0, queue_size=2, queue_timeout=0.3,
            env={**ENV, "MISBEHAVING_STATE": str(tmp_path)},
        )
        async with running(cfg) as pool:
            long = asyncio.create_task(call(pool, b"/sleep?1.5"))
            await busy_pid(tmp_path)
            started = time.monotonic()
            excess = await asyncio.gather(
                *(call(pool, b"/pid") for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(e, Overloaded) for e in excess), excess
            assert time.monotonic() - started < 1.0
            full = [e for e in excess if "full" in str(e)]
            assert len(full) == 3, excess  # two waited queue_timeout, three found it full
            assert not long.done()
            assert (await long)[0] == 200
            assert await pid_of_answer(pool) > 0  # the pool serves again once free

    run(scenario())


# --------------------------------------------------------------------- scaling


@pytest.mark.timeout(30)
def test_scale_up_and_down_changes_the_number_of_ready_workers() -> None:
    async def scenario() -> None:
        async with running(config(workers=1)) as pool:
            (first,) = await all_ready(pool, 1)
            pool.scale(+1)
            both = await all_ready(pool, 2)
            assert first in both
            pool.scale(+1)
            await all_ready(pool, 3)
            pool.scale(-1)
            pool.scale(-1)
            (survivor,) = await all_ready(pool, 1)
            assert await pid_of_answer(pool) == survivor
            pool.scale(-1)  # never below one
            assert await all_ready(pool, 1) == {survivor}
            assert sum(pool.statistics().restarts.values()) == 0

    run(scenario())


@pytest.mark.timeout(30)
def test_scale_up_then_straight_down_keeps_the_worker_it_had() -> None:
    async def scenario() -> None:
        async with running(config(workers=1)) as pool:
            (first,) = await all_ready(pool, 1)
            pool.scale(+1)
            pool.scale(-1)
            assert ready_pids(pool) == {first}, "capacity dipped to zero"
            assert await all_ready(pool, 1) == {first}
            assert await pid_of_answer(pool) == first

    run(scenario())


@pytest.mark.timeout(30)
def test_adaptive_prefetch_follows_the_service_time(tmp_path: Path) -> None:
    """Unset --prefetch: a worker starts at the minimum depth, goes deeper once it answers
    fast requests back to back (many served in the budget), and back to the minimum
    once its requests take longer than the budget allows for more."""
    async def scenario() -> None:
        cfg = config(workers=1, prefetch=None, env={**ENV, "MISBEHAVING_STATE": str(tmp_path)})
        async with running(cfg) as pool:
            (w,) = pool.workers
            assert w.prefetch == PREFETCH_MIN  # nothing measured yet
            for _ in range(10):  # in batches: a busy worker, answers back to back
                answers = await asyncio.gather(*(call(pool, b"/pid") for _ in range(8)))
                assert {status for status, _ in answers} == {200}
            # Here a request takes some 30-100 us: 16 (the maximum) on a quiet machine; on a
            # loaded one, less, but deeper than the minimum either way.
            assert PREFETCH_MIN < w.prefetch <= PREFETCH_MAX, w.service
            slow = PREFETCH_BUDGET  # one request per budget: fewer than the minimum fit
            for _ in range(40):
                assert (await call(pool, b"/sleep?%g" % slow))[0] == 200
            assert w.prefetch == PREFETCH_MIN, w.service

    run(scenario())


@pytest.mark.timeout(30)
def test_a_fixed_prefetch_is_not_adapted(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = config(workers=1, prefetch=5, env={**ENV, "MISBEHAVING_STATE": str(tmp_path)})
        async with running(cfg) as pool:
            (w,) = pool.workers
            for _ in range(20):
                assert (await call(pool, b"/pid"))[0] == 200
            assert w.prefetch == 5 and w.service == 0.0

    run(scenario())


@pytest.mark.timeout(30)
def test_dispatch_calls_back_and_a_request_it_cannot_send_fails_alone(tmp_path: Path) -> None:
    """Pool.dispatch (the front's callback API): the callback sees the response; a request
    whose head cannot be encoded fails by itself, and the worker stays and serves the next."""
    async def scenario() -> None:
        cfg = config(workers=1, env={**ENV, "MISBEHAVING_STATE": str(tmp_path)})
        async with running(cfg) as pool:
            (w,) = pool.workers
            done = asyncio.get_running_loop().create_future()

            def news() -> None:
                if good.finished and not done.done():
                    done.set_result(None)

            good = pool.dispatch(RequestHead(b"GET", b"/pid"), (), news)
            await asyncio.wait_for(done, 10)
            assert good.resp is not None and good.resp.status == 200
            body = b"".join(bytes(m.data) for m in good._chunks)
            assert int(body) == w.pid
            good._discard()
            failed = asyncio.get_running_loop().create_future()
            bad_head = RequestHead(b"GET", b"/pid", [(b"x", "not bytes")])  # type: ignore[list-item]
            bad = pool.dispatch(bad_head, (), lambda: failed.done() or failed.set_result(None))
            await asyncio.wait_for(failed, 10)
            assert isinstance(bad._error, ZeusError) and not w.in_flight
            status, body = await call(pool, b"/pid")
            assert status == 200 and int(body) == w.pid  # the same worker, still serving

    run(scenario())
