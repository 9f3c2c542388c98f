"""Load balancing across workers: round-robin and least-connections (pure).

A balancer picks among the workers that can take a request now: alive, ready, not retiring,
and with fewer requests in flight than their capacity.  When none can, the caller queues the
request (bounded) and retries when a worker frees up.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TypeVar

from mypy_extensions import mypyc_attr


@mypyc_attr(allow_interpreted_subclasses=True)
class Candidate:
    """What a balancer needs to know of a worker: a base class (the pool's WorkerHandle), not
    a Protocol, so that compiled code reads these without a look-up by name -- ``pick`` runs
    for every request and every freed slot."""

    capacity: int  # requests it serves at once
    prefetch: int  # how many more its queue may hold when all are busy

    @property
    def load(self) -> int:
        """Requests in flight."""
        raise NotImplementedError

    @property
    def accepting(self) -> bool:
        """Whether it may be given a new request."""
        raise NotImplementedError


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

    def pick(self, workers: Sequence[T], spill: bool = False) -> T | None:
        """The worker to use, or None if every worker is saturated or unavailable.

        Among the workers below their capacity, by the balancer's mode.  With ``spill``,
        failing that, the least loaded of those below ``capacity + prefetch`` (the shortest
        queue).  One pass, each worker's load read once: this runs for every request and
        every freed slot.
        """
        n = len(workers)
        if n == 0:
            return None
        rr = self.mode is Balance.ROUND_ROBIN
        start = self._next % n if rr else 0
        best: T | None = None
        best_load = 0
        spare: T | None = None
        spare_load = 0
        for i in range(n):
            j = start + i
            w = workers[j if j < n else j - n]
            load = w.load
            cap = w.capacity
            if load >= (cap + w.prefetch if spill else cap) or not w.accepting:
                continue
            if load < cap:
                if rr:
                    self._next = j + 1 if j + 1 < n else j + 1 - n
                    return w
                if best is None or load < best_load:
                    best, best_load = w, load
            elif spare is None or load < spare_load:
                spare, spare_load = w, load
        return best if best is not None else spare

    def __repr__(self) -> str:
        return f"<Balancer {self.mode.value}>"
