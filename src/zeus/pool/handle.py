"""The pool's record of one worker: its process, region, channel, pump and requests."""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from zeus.aiochannel import ChannelPump
from zeus.channel import Channel
from zeus.core.spin import SpinPolicy
from zeus.pool.config import PREFETCH_MIN
from zeus.pool.exchange import Exchange, WorkerLost
from zeus.region import Region
from zeus.supervisor.balancer import Candidate
from zeus.supervisor.policy import ExitCause
from zeus.supervisor.process import WorkerProcess, describe_exit

if TYPE_CHECKING:
    from zeus.pool.core import Pool

MAX_ABANDONED = 4096  # abandoned request IDs remembered per worker


class WState(enum.Enum):
    """Lifecycle of one worker."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # takes no new requests; stopped once idle
    STOPPING = "stopping"  # signalled; waiting for it to exit
    DEAD = "dead"


_READY: Final = WState.READY  # a module constant: an Enum class attribute is slow to look up


class WorkerHandle(Candidate):
    """The pool's record of one worker: process, region, channel, pump, requests."""

    def __init__(self, pool: Pool, index: int, generation: int,
                 extra_env: Mapping[str, str] | None = None) -> None:
        cfg = pool.config
        self.index = index
        self.generation = generation
        self.region = Region.create(cfg.region_size, cfg.slots, name=f"zeus-worker-{index}")
        try:
            env = {**cfg.env, **(extra_env or {}), "ZEUS_SPIN_NS": str(cfg.worker_spin_ns())}
            self.process = WorkerProcess(
                cfg.argv, self.region, env=env, limits=cfg.limits, cgroup=pool._cgroup,
                name=f"zeus-{pool.pid}-{index}-{generation}", cwd=cfg.cwd,
            )
        except BaseException:
            self.region.close()
            raise
        self.pid = self.process.pid
        # The front never spins: the loop has other work, and a 2-core host has no core to burn.
        self.channel = Channel(self.region, peer_pid=self.pid, spin=SpinPolicy(max_ns=0))
        self.pump = ChannelPump(
            self.channel,
            # partial, not lambda: called per message, it adds no Python frame
            functools.partial(pool._on_message, self),
            functools.partial(pool._on_wake, self),
            functools.partial(pool._on_pump_error, self),
        )
        self.state = WState.STARTING
        self.capacity = cfg.concurrency
        # Beyond capacity when every worker is busy: fixed, or adapted by Pool._served from
        # ``service`` (moving average of its service time, seconds; 0: not measured yet).
        self.prefetch = cfg.prefetch if cfg.prefetch is not None else PREFETCH_MIN
        self.service = 0.0
        self.last_done = 0.0  # loop time of its last answer
        self.in_flight: dict[int, Exchange] = {}
        # Requests given up on (client gone, timeout) whose end the worker may still send;
        # insertion-ordered so the oldest can be forgotten (bounded).
        self.abandoned: dict[int, None] = {}
        self.requests = 0
        self.request_limit = cfg.recycle.request_limit(pool._rng)
        self.retire_reason: str | None = None
        self.replacement: WorkerHandle | None = None
        self.kill_cause: ExitCause | None = None
        self.kill_timer: asyncio.TimerHandle | None = None
        self.ready_at: float | None = None
        self.heartbeat = (0, time.monotonic())
        self.gone = False  # a send found its channel closed: its exit is yet to be reported

    @property
    def accepting(self) -> bool:
        """Whether the balancer may give this worker a new request."""
        if self.state is not _READY or self.gone:
            return False
        rep = self.replacement
        return self.retire_reason is None or rep is None or rep.state is not _READY

    @property
    def load(self) -> int:
        """Requests in flight (the balancer's measure)."""
        return len(self.in_flight)

    def lost_error(self) -> WorkerLost:
        """The error its requests get when it is gone."""
        rc = self.process.returncode
        status = describe_exit(rc) if rc is not None else "protocol violation"
        return WorkerLost(f"worker {self.pid} lost ({status})", self.pid, status)

    def __repr__(self) -> str:
        return (
            f"<Worker {self.index}.{self.generation} pid={self.pid} {self.state.value} "
            f"in_flight={len(self.in_flight)} served={self.requests}>"
        )
