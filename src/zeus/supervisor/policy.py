"""Restart and recycling policy: pure decisions, no processes, no clocks of their own.

Theory of operation
-------------------
*Restart.*  A worker that dies is replaced after a back-off that doubles with each consecutive
early death (one before it was ready, or within ``min_uptime`` seconds of its start without
having answered a request) and resets once a worker has lived longer than that.  A young worker
that answered requests and then crashed is a crash of the application on some request, not a
start that fails: it is replaced at once, or a poison request sent every second would back the
pool off into having no worker at all.  More than ``crash_loop_max`` early deaths within
``crash_loop_window`` seconds is a crash loop: logged, and the back-off stays at its maximum.
A worker that exits with WorkerExit.BOOT_FAILURE before it was ever ready means the application
cannot even be imported:
if no worker has ever become ready, the supervisor halts (gunicorn's "Worker failed to boot",
with its own exit code), since restarting cannot help.  After a reload into code that does not
boot, the old workers keep serving (they retire only once a replacement is ready) and the new
ones back off as a crash loop: an operator's mistake must not take a running site down.

*Recycle.*  A worker is retired after ``max_requests`` requests (plus a per-worker random
jitter in ``[0, max_requests_jitter]`` so the workers do not all restart together), after
``max_lifetime`` seconds, or when its RSS passes ``max_rss`` bytes.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass


class ExitCause(enum.Enum):
    """Why a worker left, for logs and metrics."""

    CRASH = "crash"  # died on a signal or a non-zero exit nobody asked for
    TIMEOUT = "timeout"  # killed because a request ran past its timeout or it hung
    LIMIT = "limit"  # killed by a resource limit (memory, CPU, files)
    RECYCLE = "recycle"  # retired by max-requests / max-lifetime / max-rss / reload
    BOOT_FAILURE = "boot_failure"  # could not import or start the application
    STOPPED = "stopped"  # the supervisor stopped it (shutdown, scale down)
    BROKEN = "broken"  # broke the channel protocol and was killed


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """What to do after a worker died."""

    delay: float  # seconds before starting the replacement
    halt: bool  # stop the whole server instead
    crash_loop: bool  # early deaths are piling up
    reason: str


class RestartPolicy:
    """Back-off and crash-loop detection across all the workers of a pool."""

    def __init__(
        self,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        min_uptime: float = 1.0,
        crash_loop_window: float = 60.0,
        crash_loop_max: int = 10,
    ) -> None:
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.min_uptime = min_uptime
        self.crash_loop_window = crash_loop_window
        self.crash_loop_max = crash_loop_max
        self._consecutive = 0
        self._early: deque[float] = deque()
        self.ever_ready = False

    def ready(self) -> None:
        """A worker finished booting."""
        self.ever_ready = True

    def exited(
        self, now: float, uptime: float, cause: ExitCause, was_ready: bool, served: int = 0
    ) -> RestartDecision:
        """Decide what follows a worker's exit at monotonic time ``now`` (``served``: the
        requests it answered)."""
        if cause is ExitCause.BOOT_FAILURE and not was_ready and not self.ever_ready:
            return RestartDecision(0.0, True, False, "the application failed to boot")
        if cause in (ExitCause.RECYCLE, ExitCause.STOPPED):
            return RestartDecision(0.0, False, False, cause.value)
        early = not was_ready or (uptime < self.min_uptime and not served)
        if not early:
            self._consecutive = 0
            return RestartDecision(0.0, False, False, cause.value)
        self._consecutive += 1
        early_deaths = self._early
        early_deaths.append(now)
        while early_deaths and now - early_deaths[0] > self.crash_loop_window:
            early_deaths.popleft()
        loop = len(early_deaths) > self.crash_loop_max
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (self._consecutive - 1))
        if loop:
            delay = self.backoff_max
        return RestartDecision(delay, False, loop, cause.value)


@dataclass(frozen=True, slots=True)
class RecyclePolicy:
    """When a healthy worker should be replaced anyway."""

    max_requests: int = 0  # 0: never
    max_requests_jitter: int = 0
    max_lifetime: float = 0.0  # seconds; 0: never
    max_rss: int = 0  # bytes; 0: never

    def request_limit(self, rng: random.Random) -> int:
        """The request count after which one new worker retires (0: none)."""
        if self.max_requests <= 0:
            return 0
        return self.max_requests + rng.randint(0, max(0, self.max_requests_jitter))

    def reason(
        self, requests: int, limit: int, age: float, rss: int | None
    ) -> str | None:
        """Why a worker with these figures should be recycled now, or None."""
        if limit and requests >= limit:
            return f"served {requests} requests (max-requests {limit})"
        if self.max_lifetime and age >= self.max_lifetime:
            return f"lived {age:.0f}s (max-lifetime {self.max_lifetime:.0f}s)"
        if self.max_rss and rss is not None and rss >= self.max_rss:
            return f"RSS {rss >> 20} MiB (max-rss {self.max_rss >> 20} MiB)"
        return None
