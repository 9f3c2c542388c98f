"""What a pool is told (PoolConfig) and what it reports (statistics records)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final

from zeus.core.layout import DEFAULT_REGION_SIZE, DEFAULT_SLOTS
from zeus.supervisor.balancer import Balance
from zeus.supervisor.limits import Limits
from zeus.supervisor.policy import RecyclePolicy, RestartPolicy

# Adaptive prefetch (PoolConfig.prefetch None): a worker's ring queues as many complete
# requests beyond its concurrency as it serves in PREFETCH_BUDGET seconds, within these bounds.
PREFETCH_MIN: Final = 2
PREFETCH_MAX: Final = 16
PREFETCH_BUDGET: Final = 0.002


@dataclass(slots=True)
class PoolConfig:
    """Everything the pool needs to know; the CLI and the config file fill it."""

    argv: list[str]
    workers: int = 2
    balance: Balance = Balance.ROUND_ROBIN
    concurrency: int = 1
    # Extra complete requests queued in a worker's ring beyond its concurrency when every
    # worker is busy; None: adaptive (see Pool._served and the PREFETCH_* constants).
    prefetch: int | None = None
    timeout: float = 30.0  # per request; 0 disables
    kill_grace: float = 5.0  # TERM -> KILL for a timed-out worker
    graceful_timeout: float = 30.0
    queue_size: int = 1024
    queue_timeout: float = 30.0
    boot_timeout: float = 60.0
    heartbeat_timeout: float = 0.0  # a busy worker whose heartbeat stalls this long is hung
    region_size: int = DEFAULT_REGION_SIZE
    slots: int = DEFAULT_SLOTS
    recycle: RecyclePolicy = field(default_factory=RecyclePolicy)
    limits: Limits = field(default_factory=Limits)
    env: dict[str, str] = field(default_factory=dict)  # on top of the front's environment
    cwd: str | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    tick: float = 0.5  # how often recycling, heartbeats and boot deadlines are checked
    # How long an idle worker spins before it sleeps (ns).  None: spin only when there is a
    # core to spare (more cores than workers + the front); spinning on an oversubscribed
    # machine takes the core the front needs (measured: 40-90% fewer requests/s on 2 cores).
    spin_ns: int | None = None

    def worker_spin_ns(self) -> int:
        """The spin budget workers get (through ZEUS_SPIN_NS)."""
        if self.spin_ns is not None:
            return self.spin_ns
        return 40_000 if (os.cpu_count() or 1) > self.workers + 1 else 0


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """One worker, for metrics."""

    index: int
    pid: int
    state: str
    in_flight: int
    requests: int
    rss: int | None
    cpu_seconds: float | None
    arena_in_use: int
    arena_size: int = 0  # the front's (request) part of the arena


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """The pool at one instant, for metrics and autoscaling."""

    workers: tuple[WorkerStatistics, ...]
    busy: int
    idle: int
    queued: int
    in_flight: int
    completed: int
    restarts: dict[str, int]
    queue_wait_total: float
    queue_waits: int = 0  # requests that waited in the queue (queue_wait_total is their sum)
    space_waits: int = 0  # sends to a worker that waited for ring or arena space
