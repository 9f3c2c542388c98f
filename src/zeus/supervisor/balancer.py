"""Load balancing across workers: round-robin and least-connections (pure).

A balancer picks among the workers that can take a request now: alive, ready, not retiring,
and with fewer requests in flight than their capacity.  When none can, the caller queues the
request (bounded) and retries when a worker frees up.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """What a balancer needs to know of a worker."""

    @property
    def in_flight(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def accepting(self) -> bool: ...


T = TypeVar("T", bound=Candidate)


class Balance(enum.Enum):
    """The balancing modes users can choose."""

    ROUND_ROBIN = "round-robin"
    LEAST_CONN = "least-conn"


class Balancer:
    """Picks the worker for the next request."""

    def __init__(self, mode: Balance = Balance.ROUND_ROBIN) -> None:
        self.mode = mode
        self._next = 0

    def pick(self, workers: Sequence[T]) -> T | None:
        """The worker to use, or None if every worker is saturated or unavailable."""
        n = len(workers)
        if n == 0:
            return None
        if self.mode is Balance.LEAST_CONN:
            best: T | None = None
            for w in workers:
                if w.accepting and w.in_flight < w.capacity and (
                    best is None or w.in_flight < best.in_flight
                ):
                    best = w
            return best
        start = self._next % n
        for i in range(n):
            w = workers[(start + i) % n]
            if w.accepting and w.in_flight < w.capacity:
                self._next = (start + i + 1) % n
                return w
        return None

    def __repr__(self) -> str:
        return f"<Balancer {self.mode.value}>"
