"""Supervisor policy, without processes: when to restart a worker and after what back-off,
when early deaths are a crash loop, when to give up (the application cannot boot), when to
recycle a healthy worker, and which worker the balancer picks.
"""

from __future__ import annotations

import random

import pytest

from zeus.supervisor.balancer import Balance, Balancer, Candidate
from zeus.supervisor.policy import ExitCause, RecyclePolicy, RestartPolicy

# ---------------------------------------------------------------- RestartPolicy


def policy(**overrides: float) -> RestartPolicy:
    settings: dict[str, float] = {
        "backoff_initial": 0.1, "backoff_max": 1.0, "min_uptime": 1.0,
        "crash_loop_window": 60.0, "crash_loop_max": 1000,
    }
    settings.update(overrides)
    return RestartPolicy(
        backoff_initial=settings["backoff_initial"], backoff_max=settings["backoff_max"],
        min_uptime=settings["min_uptime"], crash_loop_window=settings["crash_loop_window"],
        crash_loop_max=int(settings["crash_loop_max"]),
    )


def early_crash(p: RestartPolicy, now: float = 0.0) -> float:
    """A ready worker dies 0.1 s after its start; the back-off before its replacement."""
    decision = p.exited(now, 0.1, ExitCause.CRASH, True)
    assert not decision.halt
    return decision.delay


def test_a_young_worker_that_answered_requests_is_replaced_at_once() -> None:
    """Dying 0.1 s after its start is early only if it answered nothing: a worker that served
    requests and then crashed on one is the application crashing, not a start that fails (a
    poison request every second must not back the pool off into having no worker)."""
    p = policy()
    for t in range(30):
        decision = p.exited(float(t), 0.1, ExitCause.CRASH, True, served=5)
        assert decision.delay == 0.0 and not decision.crash_loop
    assert early_crash(p, 31.0) > 0.0  # one that answered nothing still backs off
    assert p.exited(32.0, 0.1, ExitCause.CRASH, False, served=5).delay > 0.0  # never ready


def test_the_back_off_doubles_with_each_consecutive_early_death_up_to_its_cap() -> None:
    p = policy()
    assert [early_crash(p, t) for t in range(7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    )


def test_a_worker_that_never_became_ready_died_early_however_long_it_lived() -> None:
    p = policy()
    delays = [p.exited(t, 30.0, ExitCause.CRASH, False).delay for t in range(3)]
    assert delays == pytest.approx([0.1, 0.2, 0.4])


def test_a_long_lived_worker_restarts_at_once_and_resets_the_back_off() -> None:
    p = policy()
    for t in range(4):
        early_crash(p, t)
    late = p.exited(10.0, 5.0, ExitCause.CRASH, True)
    assert (late.delay, late.halt, late.crash_loop) == (0.0, False, False)
    assert early_crash(p, 11.0) == pytest.approx(0.1)


@pytest.mark.parametrize("cause", [ExitCause.RECYCLE, ExitCause.STOPPED])
def test_a_worker_the_supervisor_stopped_is_replaced_at_once_and_leaves_the_back_off_alone(
    cause: ExitCause,
) -> None:
    p = policy()
    early_crash(p)
    early_crash(p, 1.0)
    decision = p.exited(2.0, 0.1, cause, True)
    assert (decision.delay, decision.halt, decision.crash_loop) == (0.0, False, False)
    assert early_crash(p, 3.0) == pytest.approx(0.4)  # the count of early deaths went on


@pytest.mark.parametrize("cause", [ExitCause.TIMEOUT, ExitCause.LIMIT, ExitCause.BROKEN])
def test_other_causes_of_early_death_back_off_like_crashes(cause: ExitCause) -> None:
    p = policy()
    assert [p.exited(t, 0.1, cause, True).delay for t in range(3)] == pytest.approx(
        [0.1, 0.2, 0.4]
    )


def test_more_than_crash_loop_max_early_deaths_in_the_window_is_a_crash_loop() -> None:
    p = policy(crash_loop_max=3, crash_loop_window=10.0, backoff_max=5.0)
    decisions = [p.exited(t, 0.1, ExitCause.CRASH, True) for t in (0.0, 1.0, 2.0, 3.0)]
    assert [d.crash_loop for d in decisions] == [False, False, False, True]
    # The back-off was still doubling (0.1, 0.2, 0.4); in a loop it is the maximum at once.
    assert [d.delay for d in decisions] == pytest.approx([0.1, 0.2, 0.4, 5.0])
    assert not any(d.halt for d in decisions)


def test_early_deaths_older_than_the_window_no_longer_count_towards_a_crash_loop() -> None:
    p = policy(crash_loop_max=3, crash_loop_window=10.0)
    for t in (0.0, 1.0, 2.0):
        assert not p.exited(t, 0.1, ExitCause.CRASH, True).crash_loop
    # At t=10.5 the death at t=0 has left the window: three in it, not more than three.
    assert not p.exited(10.5, 0.1, ExitCause.CRASH, True).crash_loop
    # At t=11.0 the death at t=1 is exactly 10 s old: still in, so four in the window.
    assert p.exited(11.0, 0.1, ExitCause.CRASH, True).crash_loop


def test_deaths_of_long_lived_workers_never_make_a_crash_loop() -> None:
    p = policy(crash_loop_max=2, crash_loop_window=100.0)
    assert not any(p.exited(t, 5.0, ExitCause.CRASH, True).crash_loop for t in range(10))


def test_a_boot_failure_before_any_worker_was_ever_ready_halts() -> None:
    decision = policy().exited(0.0, 0.2, ExitCause.BOOT_FAILURE, False)
    assert decision.halt
    assert "boot" in decision.reason


def test_a_boot_failure_after_some_worker_was_ready_does_not_halt_but_backs_off() -> None:
    p = policy()
    p.ready()
    decisions = [p.exited(t, 0.2, ExitCause.BOOT_FAILURE, False) for t in range(3)]
    assert not any(d.halt for d in decisions)
    assert [d.delay for d in decisions] == pytest.approx([0.1, 0.2, 0.4])


def test_a_boot_failure_of_a_worker_that_was_itself_ready_does_not_halt() -> None:
    assert not policy().exited(0.0, 0.2, ExitCause.BOOT_FAILURE, True).halt


@pytest.mark.parametrize("cause", [c for c in ExitCause if c is not ExitCause.BOOT_FAILURE])
def test_no_other_cause_halts_even_if_no_worker_was_ever_ready(cause: ExitCause) -> None:
    p = policy()
    assert not any(p.exited(t, 0.0, cause, False).halt for t in range(20))


# ---------------------------------------------------------------- RecyclePolicy


def test_request_limit_is_max_requests_plus_a_jitter_drawn_in_its_whole_range() -> None:
    rng = random.Random(1234)
    limits = {RecyclePolicy(max_requests=20, max_requests_jitter=5).request_limit(rng)
              for _ in range(500)}
    assert limits == set(range(20, 26))


def test_request_limit_without_jitter_is_max_requests_and_zero_means_never() -> None:
    rng = random.Random(1)
    assert RecyclePolicy(max_requests=20).request_limit(rng) == 20
    assert RecyclePolicy(max_requests=20, max_requests_jitter=-3).request_limit(rng) == 20
    assert RecyclePolicy().request_limit(rng) == 0
    assert RecyclePolicy(max_requests_jitter=5).request_limit(rng) == 0


def test_recycle_reason_by_request_count() -> None:
    p = RecyclePolicy(max_requests=20, max_requests_jitter=5)
    assert p.reason(22, 23, 0.0, None) is None
    reason = p.reason(23, 23, 0.0, None)
    assert reason is not None and "23 requests" in reason and "max-requests 23" in reason
    assert p.reason(10_000, 0, 0.0, None) is None  # a limit of 0: never by count


def test_recycle_reason_by_lifetime() -> None:
    p = RecyclePolicy(max_lifetime=60.0)
    assert p.reason(0, 0, 59.9, None) is None
    reason = p.reason(0, 0, 60.0, None)
    assert reason is not None and "max-lifetime 60s" in reason


def test_recycle_reason_by_rss() -> None:
    p = RecyclePolicy(max_rss=100 << 20)
    assert p.reason(0, 0, 0.0, (100 << 20) - 1) is None
    assert p.reason(0, 0, 0.0, None) is None  # RSS unknown: no decision
    reason = p.reason(0, 0, 0.0, 150 << 20)
    assert reason is not None and "150 MiB" in reason and "max-rss 100 MiB" in reason


def test_a_default_recycle_policy_never_recycles() -> None:
    assert RecyclePolicy().reason(10**9, 0, 10**9, 1 << 40) is None


# --------------------------------------------------------------------- Balancer


class Fake(Candidate):
    """A worker as the balancer sees it."""

    def __init__(self, name: str, load: int = 0, capacity: int = 1, accepting: bool = True,
                 prefetch: int = 0) -> None:
        self.name = name
        self._load = load
        self.capacity = capacity
        self._accepting = accepting
        self.prefetch = prefetch

    @property
    def load(self) -> int:
        return self._load

    @load.setter
    def load(self, value: int) -> None:
        self._load = value

    @property
    def accepting(self) -> bool:
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self._accepting = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fake) and (self.name, self.load, self.capacity) == (
            other.name, other.load, other.capacity)

    def __repr__(self) -> str:
        return f"Fake({self.name!r}, load={self.load}, capacity={self.capacity})"


def picks(b: Balancer, workers: list[Fake], n: int) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        w = b.pick(workers)
        out.append(w.name if w is not None else None)
    return out


def test_round_robin_takes_the_workers_in_turn() -> None:
    ws = [Fake("a"), Fake("b"), Fake("c")]
    assert picks(Balancer(Balance.ROUND_ROBIN), ws, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_is_the_default() -> None:
    assert Balancer().mode is Balance.ROUND_ROBIN


@pytest.mark.parametrize(
    "unavailable",
    [Fake("b", load=1), Fake("b", load=3, capacity=3), Fake("b", accepting=False)],
    ids=["saturated", "saturated-at-capacity-3", "not-accepting"],
)
def test_round_robin_skips_workers_that_cannot_take_a_request(unavailable: Fake) -> None:
    ws = [Fake("a"), unavailable, Fake("c")]
    assert picks(Balancer(Balance.ROUND_ROBIN), ws, 4) == ["a", "c", "a", "c"]


def test_round_robin_resumes_after_the_worker_it_picked_last() -> None:
    b = Balancer(Balance.ROUND_ROBIN)
    ws = [Fake("a"), Fake("b", accepting=False), Fake("c"), Fake("d")]
    assert picks(b, ws, 2) == ["a", "c"]
    ws[1].accepting = True
    assert picks(b, ws, 4) == ["d", "a", "b", "c"]


def test_round_robin_counts_capacity_not_just_idleness() -> None:
    ws = [Fake("a", load=2, capacity=3), Fake("b", load=1)]
    assert picks(Balancer(Balance.ROUND_ROBIN), ws, 2) == ["a", "a"]


@pytest.mark.parametrize("mode", list(Balance))
def test_no_pick_when_every_worker_is_saturated_or_unavailable(mode: Balance) -> None:
    b = Balancer(mode)
    ws = [Fake("a", load=1), Fake("b", accepting=False), Fake("c", load=2, capacity=2)]
    assert b.pick(ws) is None
    assert b.pick([]) is None


def test_round_robin_picks_again_once_a_worker_frees_up() -> None:
    b = Balancer(Balance.ROUND_ROBIN)
    ws = [Fake("a", load=1), Fake("b", load=1)]
    assert b.pick(ws) is None
    ws[1].load = 0
    assert picks(b, ws, 2) == ["b", "b"]


def test_least_conn_picks_the_worker_with_the_fewest_requests_in_flight() -> None:
    ws = [Fake("a", 3, 4), Fake("b", 1, 4), Fake("c", 2, 4)]
    assert Balancer(Balance.LEAST_CONN).pick(ws) is ws[1]


def test_least_conn_breaks_ties_by_order() -> None:
    ws = [Fake("a", 1, 4), Fake("b", 0, 4), Fake("c", 0, 4)]
    assert picks(Balancer(Balance.LEAST_CONN), ws, 3) == ["b", "b", "b"]


def test_least_conn_skips_the_idlest_worker_when_it_cannot_take_a_request() -> None:
    b = Balancer(Balance.LEAST_CONN)
    assert b.pick([Fake("a", 0, accepting=False), Fake("b", 2, 4)]) == Fake("b", 2, 4)
    assert b.pick([Fake("a", 0, capacity=0), Fake("b", 2, 4)]) == Fake("b", 2, 4)


def test_least_conn_compares_requests_in_flight_not_free_capacity() -> None:
    # b has more room left (3 of 4) but more requests in flight than a (0 of 1).
    ws = [Fake("a", 0, 1), Fake("b", 1, 4)]
    assert Balancer(Balance.LEAST_CONN).pick(ws) is ws[0]


@pytest.mark.parametrize("mode", list(Balance))
def test_spill_goes_to_the_shortest_queue_only_when_every_worker_is_at_capacity(
    mode: Balance,
) -> None:
    """With spill, a worker below capacity still wins by the mode; with all at capacity, the
    least loaded of those below capacity + their own prefetch; none when all are past it."""
    b = Balancer(mode)
    ws = [Fake("a", 2, 1, prefetch=2), Fake("b", 1, 1, prefetch=2), Fake("c", 3, 1, prefetch=2),
          Fake("d", 0, 1, accepting=False, prefetch=2)]
    assert b.pick(ws) is None
    assert b.pick(ws, spill=True) is ws[1]
    ws[2].load = 0
    assert b.pick(ws, spill=True) is ws[2]  # below capacity beats any queue
    ws[2].load = 3
    ws[1].load = 3
    assert b.pick(ws, spill=True) is ws[0]  # a at 2 < 1 + 2
    ws[0].prefetch = 1
    assert b.pick(ws, spill=True) is None  # each at or past capacity + its prefetch
    ws[2].prefetch = 16
    assert b.pick(ws, spill=True) is ws[2]  # a deeper queue allowed: c, though the longest
