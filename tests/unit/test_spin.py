"""The adaptive spin budget: grow while spinning pays, collapse when it does not, probe."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeus.core.spin import SpinPolicy, SpinStatistics


def collapse(policy: SpinPolicy) -> int:
    """Lose until the budget is zero; return how many losses it took."""
    losses = 0
    while policy.statistics().budget_ns:
        policy.lost()
        losses += 1
        assert losses <= 64, "the budget never collapsed"
    return losses


@pytest.mark.parametrize(
    "kwargs", [{"max_ns": -1}, {"probe_ns": -1}, {"probe_every": 0}, {"probe_every": -3}]
)
def test_negative_budgets_and_a_zero_probe_period_are_refused(kwargs: dict[str, int]) -> None:
    """Budgets are nanoseconds >= 0; a probe period is at least one wait."""
    with pytest.raises(ValueError):
        SpinPolicy(**kwargs)


def test_a_new_policy_spins_the_full_budget() -> None:
    """Until it has evidence, a waiter assumes the peer runs on another core."""
    policy = SpinPolicy(max_ns=40_000)
    assert policy.budget() == 40_000
    assert policy.statistics() == SpinStatistics(budget_ns=40_000, spins_won=0, spins_lost=0)


def test_each_lost_spin_halves_the_budget() -> None:
    """A wait that had to sleep after spinning halves the next spin."""
    policy = SpinPolicy(max_ns=40_000, probe_ns=2_000)
    policy.lost()
    assert policy.budget() == 20_000
    policy.lost()
    assert policy.budget() == 10_000


def test_repeated_losses_collapse_the_budget_to_zero() -> None:
    """Below half the probe budget the spin is not worth it: the budget drops to zero."""
    policy = SpinPolicy(max_ns=40_000, probe_ns=2_000)
    assert collapse(policy) == 6  # 20000, 10000, 5000, 2500, 1250, then 625 < 1000 -> 0
    assert policy.budget() == 0
    assert policy.statistics().spins_lost == 6


def test_won_spins_grow_the_budget_back_to_the_maximum() -> None:
    """From zero a win restores the probe budget; each further win doubles it, up to max_ns."""
    policy = SpinPolicy(max_ns=40_000, probe_ns=2_000)
    collapse(policy)
    budgets = []
    for _ in range(7):
        policy.won()
        budgets.append(policy.statistics().budget_ns)
    assert budgets == [2_000, 4_000, 8_000, 16_000, 32_000, 40_000, 40_000]
    assert policy.statistics().spins_won == 7


def test_a_collapsed_policy_probes_every_probe_every_waits() -> None:
    """At zero, every ``probe_every``-th wait spins ``probe_ns``; the others do not spin."""
    policy = SpinPolicy(max_ns=40_000, probe_ns=2_000, probe_every=4)
    collapse(policy)
    budgets = [policy.budget() for _ in range(12)]
    assert budgets == [0, 0, 0, 2_000] * 3


def test_a_probe_that_wins_brings_spinning_back() -> None:
    """When a probe pays, the budget leaves zero and later waits spin again."""
    policy = SpinPolicy(max_ns=40_000, probe_ns=2_000, probe_every=2)
    collapse(policy)
    assert [policy.budget(), policy.budget()] == [0, 2_000]
    policy.won()
    assert policy.budget() == 2_000
    assert policy.budget() == 2_000


def test_the_probe_budget_never_exceeds_the_maximum() -> None:
    """probe_ns is clipped to max_ns."""
    policy = SpinPolicy(max_ns=1_000, probe_ns=5_000, probe_every=1)
    assert policy.probe_ns == 1_000
    collapse(policy)
    assert policy.budget() == 1_000


def test_a_zero_maximum_never_spins() -> None:
    """max_ns=0 turns spinning off: every wait sleeps at once, wins or not."""
    policy = SpinPolicy(max_ns=0, probe_every=1)
    for _ in range(5):
        assert policy.budget() == 0
        policy.won()
    assert policy.budget() == 0


@given(
    max_ns=st.integers(0, 100_000),
    probe_ns=st.integers(0, 100_000),
    probe_every=st.integers(1, 20),
    events=st.lists(st.sampled_from(["budget", "won", "lost"]), max_size=200),
)
def test_the_budget_stays_between_zero_and_the_maximum(
    max_ns: int, probe_ns: int, probe_every: int, events: list[str]
) -> None:
    """Whatever the outcomes, a wait spins 0..max_ns, and the counters count the outcomes."""
    policy = SpinPolicy(max_ns, probe_ns=probe_ns, probe_every=probe_every)
    for event in events:
        if event == "budget":
            budget = policy.budget()
            assert 0 <= budget <= max_ns
            assert budget in (0, policy.probe_ns, policy.statistics().budget_ns)
        elif event == "won":
            policy.won()
        else:
            policy.lost()
        assert 0 <= policy.statistics().budget_ns <= max_ns
    stats = policy.statistics()
    assert stats.spins_won == events.count("won")
    assert stats.spins_lost == events.count("lost")


def test_repr_shows_budget_and_outcomes() -> None:
    """The repr tells the current budget and how spinning has fared."""
    policy = SpinPolicy(max_ns=8_000)
    policy.lost()
    assert repr(policy) == "<SpinPolicy budget=4000ns won=0 lost=1>"
