"""How long a waiting side spins before it sleeps: an adaptive budget.

Theory of operation
-------------------
Spinning wins when the peer is running on another core and will publish within a few
microseconds: the waiter sees the data without a futex round trip (two syscalls and a
scheduler wake-up, ~10 us).  Spinning loses when the peer is not running -- on a 2-core machine
with more runnable processes than cores the spinner only takes the core the peer needs.

So the budget learns from outcomes, like an adaptive mutex:

* the wait ended during the spin -> the spin paid; grow the budget (up to ``max_ns``);
* the wait had to sleep -> the spin was wasted; halve the budget.

When the budget has collapsed to zero the policy still probes now and then with a small budget
(every ``probe_every`` waits), so it notices when spinning starts to pay again.  The policy is
pure: it never reads a clock and never sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class SpinStatistics:
    """Counters of a SpinPolicy."""

    budget_ns: int
    spins_won: int
    spins_lost: int


class SpinPolicy:
    """Adaptive spin budget for one waiting side."""

    __slots__ = ("_budget", "_idle", "_lost", "_won", "max_ns", "probe_every", "probe_ns")

    def __init__(
        self, max_ns: int = 40_000, *, probe_ns: int = 2_000, probe_every: int = 16
    ) -> None:
        if max_ns < 0 or probe_ns < 0 or probe_every < 1:
            raise ValueError("spin budgets must be >= 0 and probe_every >= 1")
        self.max_ns: Final = max_ns
        self.probe_ns: Final = min(probe_ns, max_ns)
        self.probe_every: Final = probe_every
        self._budget = max_ns
        self._won = 0
        self._lost = 0
        self._idle = 0

    def budget(self) -> int:
        """Nanoseconds to spin for the next wait."""
        if self._budget:
            return self._budget
        self._idle += 1
        if self._idle >= self.probe_every:
            self._idle = 0
            return self.probe_ns
        return 0

    def won(self) -> None:
        """The last wait ended while spinning."""
        self._won += 1
        self._budget = min(self.max_ns, max(self._budget * 2, self.probe_ns))

    def lost(self) -> None:
        """The last wait spun in vain and had to sleep."""
        self._lost += 1
        self._budget //= 2
        if self._budget < self.probe_ns // 2:
            self._budget = 0

    def statistics(self) -> SpinStatistics:
        """Current budget and outcome counters."""
        return SpinStatistics(self._budget, self._won, self._lost)

    def __repr__(self) -> str:
        return f"<SpinPolicy budget={self._budget}ns won={self._won} lost={self._lost}>"
