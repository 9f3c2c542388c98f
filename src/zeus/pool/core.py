"""A pool of worker processes fed through shared memory: the supervisor, on asyncio.

Theory of operation
-------------------
The pool keeps ``workers`` processes alive, each with its own region, channel and pump
(``zeus.aiochannel``).  ``submit`` hands a request to a worker chosen by the balancer among the
workers that are ready, not retiring, and below their capacity: ``concurrency`` requests in
flight (1 for a plain worker, like gunicorn's sync workers), plus up to ``prefetch`` more whose
bodies are complete, queued in the worker's ring so that it never idles between requests
(a request that streams its body never waits behind another one: its worker could need arena
space the queued one holds).  When no worker can take it, the request waits in a bounded FIFO
queue for at most ``queue_timeout`` seconds, then fails with Overloaded.  Queued requests a
worker never took from its ring are retried elsewhere if it dies.

Every request gets a 64-bit ID never reused in the life of the pool; a worker's message for an
ID that is not in flight on that worker is either a late answer to a request the pool gave up on
(dropped) or a protocol violation (the worker is killed and replaced).

Failure handling, by cause:

* The worker process exits (pidfd readable, noticed at once): its requests in flight fail with
  WorkerLost -- except those it never took from its ring, which go to another worker when their
  body can be replayed.  The slot is refilled after the restart policy's back-off; a worker that
  cannot even boot halts the pool (BootFailure).
* A request runs past ``timeout``: it fails with RequestTimeout, the worker gets SIGTERM, then
  SIGKILL after ``kill_grace`` seconds, and is replaced at once.
* The worker breaks the protocol (garbage in its region, a message for an ID it does not have,
  an invalid response head): one log line names the bad value, the worker gets SIGKILL, its
  requests fail with WorkerLost.  One that publishes CLOSED and stays alive takes no request
  from then on and is killed after ``CLOSED_GRACE`` seconds.
* Recycling (max requests with jitter, max lifetime, max RSS) and rolling reload start the
  replacement first; the old worker keeps serving until the replacement is ready, then takes
  no new requests, finishes those it has, and is stopped.  No capacity dip, no failed request.

The pool knows processes and request IDs, never HTTP: the front maps these errors to 502, 504
and 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any, Final

from zeus.channel import Message, decode_response_fields, encode_request_head
from zeus.core.codec import RequestHead, ResponseHead
from zeus.core.layout import Flag, Kind, State, Word
from zeus.errors import PeerBrokenError, PeerLostError, ZeusError
from zeus.exitcodes import WorkerExit
from zeus.hooks import ExitInfo, Hooks, WorkerInfo
from zeus.pool.config import (
    PREFETCH_BUDGET,
    PREFETCH_MAX,
    PREFETCH_MIN,
    PoolConfig,
    PoolStatistics,
    WorkerStatistics,
)
from zeus.pool.exchange import (
    BootFailure,
    Exchange,
    Overloaded,
    RequestTimeout,
    ResponseAborted,
    WorkerLost,
)
from zeus.pool.handle import MAX_ABANDONED, WorkerHandle, WState
from zeus.supervisor.balancer import Balancer
from zeus.supervisor.limits import CgroupMemory
from zeus.supervisor.policy import ExitCause
from zeus.supervisor.process import describe_exit

# The hot path's enum members as plain module constants: a class attribute of an Enum costs
# some 70 ns a look-up on Python 3.11, and these are looked up several times per request.
_REQUEST_HEAD: Final = int(Kind.REQUEST_HEAD)
_RESPONSE_HEAD: Final = int(Kind.RESPONSE_HEAD)
_RESPONSE_BODY: Final = int(Kind.RESPONSE_BODY)
_CANCEL: Final = int(Kind.CANCEL)
_END: Final = int(Flag.END)
_STARTING: Final = WState.STARTING
_DRAINING: Final = WState.DRAINING

log = logging.getLogger("zeus.pool")

MAX_HEAD = 1 << 20  # a response head larger than this is a broken worker
CLOSED_GRACE = 1.0  # seconds a worker that closed its channel has to exit before SIGKILL


def time_not_started() -> float:
    """``Pool._now`` before ``start()``: there is no loop yet."""
    raise RuntimeError("the pool is not started")


class Pool:
    """Worker processes behind shared-memory channels; see the module docstring."""

    def __init__(self, config: PoolConfig, hooks: Hooks | None = None) -> None:
        if config.workers < 1:
            raise ValueError("a pool needs at least one worker")
        self.config: Final = config
        self.pid = 0
        self._workers: list[WorkerHandle] = []
        self._balancer = Balancer(config.balance)
        # Waiting requests: an awaiting ``submit`` (its future) or a callback-mode ``start``
        # (None: it is sent from ``_dispatch_queue`` itself).
        self._queue: deque[tuple[Exchange, asyncio.Future[WorkerHandle] | None]] = deque()
        self._touched: list[Exchange] = []  # callback-mode exchanges with news (see _touch)
        self._flush_soon: asyncio.Handle | None = None
        self._queue_timer: asyncio.TimerHandle | None = None  # see _expire_queue
        self._deadline_timer: asyncio.TimerHandle | None = None  # see _check_deadlines
        self._deadline_at = 0.0  # when it is due (loop time)
        self._rng = random.Random()
        self._target = config.workers
        self._pending_spawns = 0
        self._generation = 0
        self._next_index = 0
        self._running = False
        self._stopping = False
        self._halted: asyncio.Future[BaseException] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._cgroup: CgroupMemory | None = None
        self._completed = 0
        self._last_id = 0  # request IDs: never reused (the worker relies on it)
        self._queue_wait = 0.0
        self._queue_waits = 0
        self._space_waits = 0  # of the workers gone (a live worker's count is in its pump)
        self._restarts: dict[str, int] = {c.value: 0 for c in ExitCause}
        self._ready_event: asyncio.Event | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.hooks = hooks or Hooks()  # pre_spawn, worker_ready, worker_exit (zeus/hooks.py)
        self._exit_detail: dict[int, str] = {}  # worker index -> why it was killed, for the log
        self.loop: asyncio.AbstractEventLoop  # the running loop, set by start()
        # Its ``time`` method, bound once: called several times per request, and a method
        # call by name from compiled code looks the method up every time.
        self._now: Callable[[], float] = time_not_started

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, wait_ready: bool = True) -> None:
        """Start the workers; with ``wait_ready``, return once one is ready.

        Raises BootFailure if the application cannot boot.
        """
        self.pid = os.getpid()
        loop = self.loop = asyncio.get_running_loop()
        self._now = loop.time
        self._halted = loop.create_future()
        self._ready_event = asyncio.Event()
        if self.config.limits.memory:
            self._cgroup = CgroupMemory.discover()
            if self._cgroup is None:
                log.warning("no writable cgroup v2: memory limit falls back to RLIMIT_AS")
        self._running = True
        for _ in range(self._target):
            self._spawn()
        self._ticker = asyncio.create_task(self._tick(), name="zeus-pool-tick")
        if wait_ready:
            ready: asyncio.Future[Any] = asyncio.ensure_future(self._ready_event.wait())
            halted: asyncio.Future[Any] = self._halted
            try:
                done, _ = await asyncio.wait(
                    {ready, halted}, timeout=self.config.boot_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:  # also when the boot itself is cancelled (a TERM while booting)
                ready.cancel()
            if self._halted.done():
                await self.stop(graceful=False)
                raise self._halted.result()
            if not done:
                await self.stop(graceful=False)
                raise BootFailure(f"no worker became ready in {self.config.boot_timeout:.0f}s")

    @property
    def halted(self) -> asyncio.Future[BaseException]:
        """Resolves with BootFailure when the pool gives up (the server should exit)."""
        assert self._halted is not None, "pool not started"
        return self._halted

    async def stop(self, *, graceful: bool = True, timeout: float | None = None) -> None:
        """Stop: with ``graceful``, let requests in flight finish first (within ``timeout``)."""
        if not self._running:
            return
        self._stopping = True
        timeout = self.config.graceful_timeout if timeout is None else timeout
        while self._queue:
            self._queue_fail(*self._queue.popleft(), Overloaded("server is shutting down"))
        deadline = monotonic() + timeout
        if graceful:
            await self._wait_until(lambda: not any(w.in_flight for w in self._workers), deadline)
        for w in list(self._workers):
            if w.kill_cause is ExitCause.TIMEOUT:
                # Hung, already being replaced, its requests answered (504): waiting out its
                # kill grace would only delay the shutdown.
                self._stop_worker(w, ExitCause.TIMEOUT, signal.SIGKILL)
                continue
            self._stop_worker(w, ExitCause.STOPPED, signal.SIGTERM if graceful else signal.SIGINT)
        await self._wait_until(lambda: not self._workers, deadline if graceful else
                               monotonic() + min(timeout, 5.0))
        for w in list(self._workers):
            w.process.send_signal(signal.SIGKILL)
        await self._wait_until(lambda: not self._workers, monotonic() + 5.0)
        for w in list(self._workers):  # unkillable (D state): reap what we can, free the rest
            self._on_exit(w)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._running = False

    async def _wait_until(self, predicate: Callable[[], bool], deadline: float) -> None:
        while not predicate():
            left = deadline - monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(0.02, left))

    def reload(self) -> None:
        """Rolling reload: start a new worker for each, retire each old one once it is up."""
        self._generation += 1
        for w in list(self._workers):
            if w.state in (WState.STARTING, WState.READY) and w.retire_reason is None:
                self._retire(w, "reload")

    def scale(self, delta: int) -> None:
        """Add (``delta > 0``) or remove workers; never below one."""
        target = max(1, self._target + delta)
        delta, self._target = target - self._target, target
        if delta > 0:
            self._reconcile()
        for _ in range(-delta):
            if self._pending_spawns:
                continue  # a spawn not yet started will find nothing missing and skip
            starting = [w for w in self._workers
                        if w.state is WState.STARTING and not w.retire_reason]
            ready = [w for w in self._workers if w.state is WState.READY and not w.retire_reason]
            if starting:
                victim = starting[-1]
            elif len(ready) > 1 or (ready and self._target < len(ready)):
                victim = min(ready, key=lambda w: len(w.in_flight))
            else:
                break
            victim.retire_reason = "scale down"
            self._drain(victim, ExitCause.STOPPED)

    # ------------------------------------------------------------------ requests

    async def submit(
        self, head: RequestHead, body: bytes | Sequence[bytes] | None = b"", *,
        streaming: bool = False,
    ) -> Exchange:
        """Hand a request to a worker; returns once its head (and ``body``) are sent.

        ``body`` may be a sequence of pieces (as they came off the socket): each goes into
        the arena as it is, without joining them first.  With ``streaming``, the caller sends
        the body with ``Exchange.send_body``.
        """
        if self._stopping or not self._running:
            raise Overloaded("server is shutting down")
        pieces: Sequence[bytes] | None
        if streaming:
            pieces = None
        elif isinstance(body, bytes) or body is None:
            pieces = (body,) if body else ()
        else:
            pieces = body
        ex = Exchange(self, self._new_id(), head, pieces)
        worker = self._pick(ex)
        if worker is None:
            worker = await self._enqueue(ex)
        else:
            self._assign(ex, worker)
        await self._send_request(ex, worker, streaming)
        return ex

    def _new_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def dispatch(self, head: RequestHead, body: Sequence[bytes], notify: Callable[[], None]
              ) -> Exchange:
        """Hand a complete request to a worker without waiting: the callback API.

        The request goes to a worker now, or waits in the queue.  Instead of awaiting
        ``response()`` and ``next_chunk()``, the caller is called back (``notify``, no
        arguments) once per batch of news -- at the end of each drain of a worker's ring, or
        soon after a failure -- and reads the exchange's state itself.  This is the front's
        hot path: no task, no future, no coroutine per request.  Raises Overloaded at once
        when shutting down or when the queue is full.
        """
        if self._stopping or not self._running:
            raise Overloaded("server is shutting down")
        ex = Exchange(self, self._new_id(), head, body)
        ex.notify = notify
        worker = self._pick(ex)
        if worker is None:
            ex.queued_at = monotonic()
            self._queue_put(ex, None)
            return ex
        self._assign(ex, worker)
        self._send_now(ex, worker)
        return ex

    def _send_now(self, ex: Exchange, w: WorkerHandle) -> None:
        """Send a callback-mode request: at once when it is a lone head that fits now (the
        common case), else in a task that may wait for ring or arena space."""
        if not ex.replay:
            pump = w.pump
            try:
                head = encode_request_head(ex.head)
                if len(head) <= pump.channel.max_chunk and pump.send_nowait(
                    ex.id, head, _REQUEST_HEAD, _END
                ):
                    ex.ring_seq = pump.sent
                    ex.handed = True
                    return
            except (PeerLostError, PeerBrokenError):
                pass  # the task sorts it out: resent elsewhere, or failed
            except Exception as exc:  # runs inside a drain: must not pass for the worker's
                self._unsendable(ex, exc)
                return
        task = asyncio.ensure_future(self._send_later(ex, w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_later(self, ex: Exchange, w: WorkerHandle) -> None:
        try:
            await self._send_request(ex, w, False)
        except ZeusError as exc:
            ex._fail(exc)
        except Exception as exc:
            self._unsendable(ex, exc)

    def _unsendable(self, ex: Exchange, exc: Exception) -> None:
        """A request that cannot be sent (a bug of ours, not the worker's): it fails alone."""
        log.error("request %d could not be sent to a worker: %r", ex.id, exc)
        w = ex.worker
        if w is not None and w.in_flight.get(ex.id) is ex:
            del w.in_flight[ex.id]
        ex.deadline = 0.0
        ex._fail(ZeusError(f"request could not be sent: {exc}"))
        self.loop.call_soon(self._dispatch_queue)  # its place is free

    def _touch(self, ex: Exchange) -> None:
        """``ex`` (callback mode) has news: call it back at the end of this batch."""
        self._touched.append(ex)
        if self._flush_soon is None:  # news from outside a drain (timer, exit) needs this
            self._flush_soon = self.loop.call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._flush_soon = None
        self._flush()

    def _flush(self) -> None:
        """Call back the exchanges touched since the last flush (they may touch more)."""
        while self._touched:
            touched, self._touched = self._touched, []
            for ex in touched:
                ex.touched = False
                notify = ex.notify
                if notify is not None:
                    try:
                        notify()
                    except Exception:  # the caller's bug must not stop the others' news
                        log.exception("callback for request %d failed", ex.id)

    def _pick(self, ex: Exchange) -> WorkerHandle | None:
        if self._queue:
            return None  # keep FIFO order behind those already waiting
        return self._choose(ex)

    def _choose(self, ex: Exchange) -> WorkerHandle | None:
        """A worker with free capacity; failing that, one whose ring may queue ``ex``."""
        return self._balancer.pick(self._workers, ex.replay is not None)

    def _queue_put(self, ex: Exchange, fut: asyncio.Future[WorkerHandle] | None) -> None:
        """Queue ``ex`` (Overloaded if the queue is full); its wait ends at queue_timeout."""
        if len(self._queue) >= self.config.queue_size:
            raise Overloaded(f"request queue full ({self.config.queue_size})")
        ex.queued_until = self._now() + self.config.queue_timeout
        self._queue.append((ex, fut))
        if self._queue_timer is None:
            self._queue_timer = self.loop.call_at(ex.queued_until, self._expire_queue)

    def _queue_head(self) -> tuple[Exchange, asyncio.Future[WorkerHandle] | None] | None:
        """The first queued request still wanted (given-up ones are dropped), or None."""
        queue = self._queue
        while queue:
            ex, fut = queue[0]
            if not (fut.done() if fut is not None else ex._error is not None):
                return ex, fut
            queue.popleft()
        return None

    @staticmethod
    def _queue_fail(ex: Exchange, fut: asyncio.Future[WorkerHandle] | None,
                    exc: BaseException) -> None:
        if fut is None:
            ex._fail(exc)
        elif not fut.done():
            fut.set_exception(exc)

    async def _enqueue(self, ex: Exchange) -> WorkerHandle:
        fut: asyncio.Future[WorkerHandle] = self.loop.create_future()
        self._queue_put(ex, fut)
        start = monotonic()
        try:
            return await fut
        finally:
            self._queue_wait += monotonic() - start
            self._queue_waits += 1

    def _expire_queue(self) -> None:
        """Fail the queued requests whose wait is over.

        One timer for the whole queue, due when its oldest entry expires (entries expire in
        FIFO order: same timeout, increasing start), instead of a timer per queued request.
        """
        self._queue_timer = None
        now = self._now()
        while (entry := self._queue_head()) is not None:
            ex = entry[0]
            if ex.queued_until > now:
                self._queue_timer = self.loop.call_at(ex.queued_until, self._expire_queue)
                return
            self._queue.popleft()
            self._queue_fail(*entry, Overloaded(
                f"no worker available within {self.config.queue_timeout:.1f}s"))

    def _dispatch_queue(self) -> None:
        """Give queued requests to workers that have room, in FIFO order."""
        while (entry := self._queue_head()) is not None:
            ex, fut = entry
            w = self._choose(ex)
            if w is None:
                return
            self._queue.popleft()
            self._assign(ex, w)
            if fut is None:
                self._queue_wait += monotonic() - ex.queued_at
                self._queue_waits += 1
                self._send_now(ex, w)
            else:
                fut.set_result(w)

    def _assign(self, ex: Exchange, w: WorkerHandle) -> None:
        ex.worker = w
        w.in_flight[ex.id] = ex
        ex.assigned_at = now = self._now()
        if self.config.timeout > 0:
            ex.deadline = deadline = now + self.config.timeout
            if self._deadline_timer is None:
                self._deadline_timer = self.loop.call_at(deadline, self._check_deadlines)
                self._deadline_at = deadline

    # One lazy timer for every request timeout, instead of a timer set and cancelled per
    # request.  All requests get the same timeout, so a new deadline is never earlier than
    # those already set: the timer is due when the oldest in-flight request anywhere expires.
    # A request that completes leaves the timer alone; when it fires early it re-arms for the
    # request now oldest.

    def _check_deadlines(self) -> None:
        """Time out every request past its deadline; re-arm for the next one."""
        self._deadline_timer = None
        now = self._now()
        expired: list[Exchange] = []
        for w in self._workers:  # all of them (it fires about once per timeout): no order
            for ex in w.in_flight.values():  # is assumed, so none can be missed and re-fire
                if ex.deadline and ex.deadline <= now:
                    expired.append(ex)
        for ex in expired:
            owner = ex.worker
            if ex.deadline and ex.deadline <= now and owner is not None and (
                owner.in_flight.get(ex.id) is ex
            ):  # not already retried or abandoned by an earlier one's handling
                ex.deadline = 0.0
                self._timed_out(ex)
        first = min((ex.deadline for w in self._workers for ex in w.in_flight.values()
                     if ex.deadline), default=0.0)
        if not first:
            return
        # _timed_out's retries may have armed one, later
        timer: asyncio.TimerHandle | None = self._deadline_timer
        if timer is None or self._deadline_at > first:
            if timer is not None:
                timer.cancel()
            self._deadline_timer = self.loop.call_at(first, self._check_deadlines)
            self._deadline_at = first

    async def _send_request(self, ex: Exchange, w: WorkerHandle, streaming: bool) -> None:
        head = encode_request_head(ex.head)
        pieces = ex.replay
        has_body = streaming or bool(pieces)
        ex.ring_seq = 0  # not published on ``w`` yet (it may hold another worker's count)
        pump = w.pump
        limit = pump.channel.max_chunk
        try:
            # The common case goes out without a coroutine: ring and arena have room.
            if len(head) > limit or not pump.send_nowait(
                ex.id, head, Kind.REQUEST_HEAD, 0 if has_body else Flag.END
            ):
                await pump.send(ex.id, head, Kind.REQUEST_HEAD, 0 if has_body else Flag.END)
            ex.ring_seq = pump.sent
            if pieces:
                last = len(pieces) - 1
                for i, piece in enumerate(pieces):
                    flags = Flag.END if i == last else 0
                    if len(piece) > limit or not pump.send_nowait(
                        ex.id, piece, Kind.REQUEST_BODY, flags
                    ):
                        await pump.send(ex.id, piece, Kind.REQUEST_BODY, flags)
            ex.handed = not streaming
        except (PeerLostError, PeerBrokenError) as exc:
            if ex._error is None and not ex.resend and isinstance(exc, PeerLostError) and (
                not self._stopping and self._untaken(ex, w)
            ):
                # The worker left (closed its channel) before its exit was reported, and
                # before taking this request: the exit will not see it, so resend it here.
                w.gone = True  # and give it nothing more
                w.in_flight.pop(ex.id, None)
                ex.resend = True
            if ex.resend and ex._error is None:
                # The worker died before taking this request: send it to another one.
                ex.resend = False
                ex.deadline = 0.0
                other = self._pick(ex)
                if other is None:
                    other = await self._enqueue(ex)
                else:
                    self._assign(ex, other)
                await self._send_request(ex, other, streaming)
                return
            if ex._error is not None:
                raise ex._error from exc
            raise w.lost_error() from exc

    def _untaken(self, ex: Exchange, w: WorkerHandle) -> bool:
        """Whether ``w`` never took ``ex`` from its ring (it never started: safe to resend)."""
        if ex.ring_seq == 0:
            return True  # its head was never published
        taken = w.channel.peer_consumed() if not w.channel.closed else None
        return taken is not None and ex.ring_seq > taken

    def _timed_out(self, ex: Exchange) -> None:
        w = ex.worker
        if ex.finished or ex._error is not None or w is None:
            return
        taken = w.channel.peer_consumed()
        method = ex.head.method.decode("latin-1")
        target = ex.head.target[:200].decode("latin-1")
        if ex.replay is not None and ex.handed and taken is not None and ex.ring_seq > taken:
            # It never started: the worker has not taken a request for ``timeout`` seconds
            # (hung while idle, e.g. stopped).  Replace the worker; the request goes to
            # another one with the others queued behind it (the loop below), not a 504.
            log.warning("request %s %s waited %.1fs in the ring of worker %d, which never "
                        "took it; replacing the worker, resending the request", method,
                        target, self.config.timeout, w.pid)
        else:
            log.warning("request %s %s timed out after %.1fs on worker %d; replacing it",
                        method, target, self.config.timeout, w.pid)
            self._abandon(ex, RequestTimeout(
                f"request timed out after {self.config.timeout:.1f}s"))
        self._exit_detail[w.index] = f"request {method} {target[:100]} not answered within " \
            f"the {self.config.timeout:g}s timeout"
        self._stop_worker(w, ExitCause.TIMEOUT, signal.SIGTERM)
        # Requests queued behind the stuck one that it never took go to another worker now
        # (it is being stopped and will not take them: the TERM makes it leave after the
        # request in progress).  Late answers from it are dropped as abandoned.
        for other in list(w.in_flight.values()):
            if other.replay is not None and other.handed and taken is not None and (
                other.ring_seq > taken
            ):
                del w.in_flight[other.id]
                w.abandoned[other.id] = None
                self._retry(other)

    def _abandon(self, ex: Exchange, error: BaseException | None) -> None:
        """Give up on ``ex`` (client gone or timeout): cancel it in the worker, free the slot."""
        w = ex.worker
        ex._fail(error or ZeusError("request cancelled"))
        if w is not None and w.in_flight.pop(ex.id, None) is not None:
            w.abandoned[ex.id] = None
            if len(w.abandoned) > MAX_ABANDONED:
                del w.abandoned[next(iter(w.abandoned))]
            w.pump.cancel(ex.id)
            self._release(ex, w)

    def _release(self, ex: Exchange, w: WorkerHandle) -> None:
        """``ex`` no longer occupies ``w``: count it, recycle if due, feed the queue."""
        ex.deadline = 0.0
        w.requests += 1
        self._completed += 1
        if w.request_limit and w.requests >= w.request_limit and w.retire_reason is None:
            reason = self.config.recycle.reason(w.requests, w.request_limit, 0.0, None)
            if reason:
                self._retire(w, reason)
        if w.state is _DRAINING and not w.in_flight:
            self._stop_worker(w, w.kill_cause or ExitCause.RECYCLE, signal.SIGTERM)
        self._dispatch_queue()

    # ------------------------------------------------------- messages from workers

    def _on_message(self, w: WorkerHandle, msg: Message) -> None:
        ex = w.in_flight.get(msg.id)
        if ex is None:
            if msg.id in w.abandoned:
                if msg.end or msg.kind == _CANCEL:
                    del w.abandoned[msg.id]
                msg.release()
                return
            msg.release()
            self._broken(w, f"message for request {msg.id}, which it does not have")
            return
        kind = msg.kind
        if kind == _RESPONSE_HEAD:
            if ex.resp is not None:
                msg.release()
                self._broken(w, f"second response head for request {msg.id}")
                return
            try:  # (not ``with msg``: two method look-ups by name where one call does)
                view = msg.data
                buf = ex._head_buf
                if (len(buf) if buf is not None else 0) + view.nbytes > MAX_HEAD:
                    self._broken(w, "response head too large")
                    return
                data: bytes | memoryview = view
                if buf is not None or msg.more:  # a head in pieces: gather them
                    if buf is None:
                        buf = ex._head_buf = bytearray()
                    buf += view
                    if msg.more:
                        return
                    data = bytes(buf)
                try:
                    status, headers = decode_response_fields(data)
                except PeerBrokenError as exc:
                    self._broken(w, str(exc))
                    return
            finally:
                msg.release()
            ex.resp = ResponseHead(status, headers)
            ex._wake()  # Exchange.response() waits on its waiter
            if msg.end:
                self._complete(ex, w)
        elif kind == _RESPONSE_BODY:
            if ex.resp is None:
                msg.release()
                self._broken(w, f"response body before head for request {msg.id}")
                return
            end = msg.end
            if msg.data.nbytes:
                ex._deliver(msg)
            else:
                msg.release()
            if end:
                self._complete(ex, w)
        elif kind == _CANCEL:
            msg.release()
            del w.in_flight[ex.id]
            ex._fail(ResponseAborted(f"worker {w.pid} aborted the response"))
            self._release(ex, w)
        else:
            msg.release()
            self._broken(w, f"message kind {kind} from a worker")

    def _complete(self, ex: Exchange, w: WorkerHandle) -> None:
        del w.in_flight[ex.id]
        ex._finish()
        if self.config.prefetch is None:
            self._served(ex, w)
        self._release(ex, w)

    def _served(self, ex: Exchange, w: WorkerHandle) -> None:
        """Adaptive prefetch: ``w`` finished ``ex``; set how deep its ring may queue.

        Its service time is the time since it took the request on: since the request was
        assigned, or since its previous answer if that came later (it was busy).  Their
        moving average sets the depth to as many requests as it serves in PREFETCH_BUDGET:
        a request queued in a ring behind others then waits about that long at most (fast
        requests: deep rings, a batch per wake-up; slow ones: the minimum).
        """
        now = self._now()
        start = ex.assigned_at if ex.assigned_at > w.last_done else w.last_done
        w.last_done = now
        sample = now - start
        service = w.service = sample if not w.service else w.service + (sample - w.service) / 8
        if service * PREFETCH_MAX <= PREFETCH_BUDGET:
            w.prefetch = PREFETCH_MAX
        else:
            w.prefetch = max(PREFETCH_MIN, int(PREFETCH_BUDGET / service))

    def _on_wake(self, w: WorkerHandle) -> None:
        if self._touched:  # the end of a drain: the front answers this batch now
            self._flush()
        if w.state is _STARTING and w.region.memory.load_u32(Word.WORKER_STATE) == State.OPEN:
            w.state = WState.READY
            w.ready_at = monotonic()
            self.config.restart.ready()
            log.info("worker %d (pid %d) ready", w.index, w.pid)
            assert self._ready_event is not None
            self._ready_event.set()
            for old in self._workers:
                if old.replacement is w:
                    self._drain(old, ExitCause.RECYCLE)
            self._dispatch_queue()
            self.hooks.worker_ready(WorkerInfo(w.index, w.generation, w.pid))

    def _on_pump_error(self, w: WorkerHandle, exc: BaseException) -> None:
        """The worker's channel failed: a protocol violation kills the worker at once."""
        if w.state is WState.DEAD:
            return
        if isinstance(exc, PeerBrokenError):
            self._broken(w, str(exc))
        elif w.state is not WState.STOPPING:
            # It published CLOSED.  A worker that is leaving exits right after (the pidfd
            # reports it, with the exit status that says why); one that stays alive would sit
            # in the balancer taking requests it can never receive: stop giving it any, and
            # kill it if it has not gone by itself within CLOSED_GRACE.
            # (The replacement starts when it exits, with the restart policy's back-off.)
            w.state = WState.STOPPING
            if w.kill_timer is None:
                w.kill_timer = self.loop.call_later(CLOSED_GRACE, self._closed_alive, w)

    def _closed_alive(self, w: WorkerHandle) -> None:
        w.kill_timer = None
        if w.state is WState.DEAD:
            return
        log.error("worker %d (pid %d) broke the channel protocol: it closed its channel but "
                  "did not exit in %.0fs; killing it", w.index, w.pid, CLOSED_GRACE)
        w.kill_cause = ExitCause.BROKEN
        self._exit_detail[w.index] = "closed its channel but did not exit"
        w.process.send_signal(signal.SIGKILL)

    def _broken(self, w: WorkerHandle, why: str) -> None:
        log.error("worker %d (pid %d) broke the channel protocol: %s; killing it", w.index,
                  w.pid, why)
        self._exit_detail.setdefault(w.index, why)
        w.pump.fail(PeerBrokenError(why))
        for ex in list(w.in_flight.values()):
            ex._fail(WorkerLost(f"worker {w.pid} broke the protocol", w.pid, why))
        w.in_flight.clear()
        self._stop_worker(w, ExitCause.BROKEN, signal.SIGKILL)

    # ------------------------------------------------------------- process events

    def _spawn(self) -> WorkerHandle | None:
        index = self._next_index
        self._next_index += 1
        extra_env = self.hooks.pre_spawn(WorkerInfo(index, self._generation, None))
        try:
            w = WorkerHandle(self, index, self._generation, extra_env)
        except OSError as exc:
            log.error("cannot start worker: %s", exc)
            self._halt(BootFailure(f"cannot start worker {self.config.argv[0]!r}: {exc}"))
            return None
        w.process.watch(asyncio.get_running_loop(), lambda: self._on_exit(w))
        for old in self._workers:  # a retiring worker whose replacement died gets this one
            if old.retire_reason and old.replacement is None and old.state is WState.READY:
                old.replacement = w
                break
        self._workers.append(w)
        log.info("started worker %d (pid %d)", w.index, w.pid)
        return w

    def _retire(self, w: WorkerHandle, reason: str) -> None:
        """Replace ``w``: start its replacement now, drain ``w`` once that one is ready."""
        if w.retire_reason is not None:
            return
        w.retire_reason = reason
        log.info("recycling worker %d (pid %d): %s", w.index, w.pid, reason)
        if self._stopping:
            return
        w.replacement = None
        rep = self._spawn()  # links itself to the first retiring worker without one
        if rep is not None:
            for old in self._workers:
                if old.replacement is w:  # w was itself a replacement (a reload during a
                    old.replacement = rep  # reload): the new worker takes its place
        if rep is None or w.state is WState.STARTING:
            self._drain(w, ExitCause.RECYCLE)

    def _drain(self, w: WorkerHandle, cause: ExitCause) -> None:
        """Stop giving ``w`` requests; stop it once it has none in flight."""
        if w.state in (WState.STOPPING, WState.DEAD):
            return
        w.state = WState.DRAINING
        w.kill_cause = w.kill_cause or cause
        if not w.in_flight:
            self._stop_worker(w, cause, signal.SIGTERM)

    def _stop_worker(self, w: WorkerHandle, cause: ExitCause, sig: int) -> None:
        if w.state is WState.DEAD:
            return
        if w.kill_cause is None or cause in (ExitCause.TIMEOUT, ExitCause.BROKEN):
            w.kill_cause = cause
        w.state = WState.STOPPING
        w.process.send_signal(sig)
        if sig != signal.SIGKILL and w.kill_timer is None:
            grace = self.config.kill_grace if cause is ExitCause.TIMEOUT else (
                self.config.graceful_timeout
            )
            w.kill_timer = asyncio.get_running_loop().call_later(
                grace, w.process.send_signal, signal.SIGKILL
            )
        self._reconcile()

    def _on_exit(self, w: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        cpu = w.process.cpu_seconds()  # readable until the zombie is reaped
        rc = w.process.reap(loop)
        if rc is None and w.state is not WState.STOPPING:
            return  # spurious readiness
        if w.state is WState.DEAD:
            return
        was_ready = w.ready_at is not None
        prior = w.state
        w.state = WState.DEAD
        if w.kill_timer is not None:
            w.kill_timer.cancel()
        cause, detail = self._classify(w, rc, cpu)
        noted = self._exit_detail.pop(w.index, "")  # why we killed it, if we did
        detail = detail or noted or ("shutdown" if cause is ExitCause.STOPPED and self._stopping
                                     else "")
        status = describe_exit(rc) if rc is not None else "not reaped"
        level = logging.INFO if cause in (ExitCause.RECYCLE, ExitCause.STOPPED) else logging.ERROR
        lost = len(w.in_flight)
        # One line per death: how (signal name or exit code), why (cause and detail: the cause
        # is the metrics' restart reason too), and what it had done.
        log.log(level, "worker %d (pid %d) exited: %s; cause: %s%s; up %.1fs, %d requests%s",
                w.index, w.pid, status, cause.value, f" ({detail})" if detail else "",
                w.process.age, w.requests, f", {lost} in flight" if lost else "")
        if prior is not WState.STOPPING or cause not in (ExitCause.STOPPED,):
            self._restarts[cause.value] += 1
        # Requests it never took from its ring can go elsewhere; the rest failed with it.  The
        # count is the channel's checked copy: a worker that broke the protocol gets no retry.
        taken = w.channel.peer_consumed() if not w.channel.closed else None
        retry: list[Exchange] = []
        for ex in list(w.in_flight.values()):
            untaken = taken is not None and (ex.ring_seq == 0 or ex.ring_seq > taken)
            if ex.replay is None or not untaken or self._stopping:
                ex._fail(WorkerLost(f"worker {w.pid} died ({status})", w.pid, status))
            elif ex.handed:
                retry.append(ex)
            else:
                ex.resend = True  # its sender is blocked on this worker: it will resend
        w.in_flight.clear()
        for old in self._workers:
            if old.replacement is w:
                old.replacement = None  # the next worker started takes its place
        self._space_waits += w.pump.space_waits
        try:
            w.pump.close()
        finally:
            w.region.close()
            self._workers.remove(w)
        for ex in retry:
            self._retry(ex)
        self.hooks.worker_exit(WorkerInfo(w.index, w.generation, w.pid),
                               ExitInfo(rc, status, cause.value, detail))
        decision = self.config.restart.exited(monotonic(), w.process.age, cause, was_ready,
                                              w.requests)
        if decision.halt:
            log.critical("worker %d failed to boot (%s): giving up", w.index, status)
            self._halt(BootFailure(f"the application failed to boot (worker {status})"))
            return
        if decision.crash_loop:
            log.error("workers keep dying right after start (crash loop); next restart in "
                      "%.1fs", decision.delay)
        self._reconcile(decision.delay)
        self._dispatch_queue()

    def _retry(self, ex: Exchange) -> None:
        """Hand ``ex`` to another worker in the background."""
        ex.handed = False
        # It belongs to no worker until _redispatch assigns it: a timer that fires meanwhile
        # (several may, in one loop iteration) must not time it out on the worker it left.
        ex.worker = None
        ex.deadline = 0.0
        task = asyncio.ensure_future(self._redispatch(ex))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _redispatch(self, ex: Exchange) -> None:
        ex.deadline = 0.0
        try:
            w = self._pick(ex)
            if w is None:
                w = await self._enqueue(ex)
            else:
                self._assign(ex, w)
            if ex._error is not None:
                # Given up on while it waited (client gone): never send it.  Sent, its
                # answer would find a failed exchange and look like a broken worker.
                self._unassign(ex, w)
                return
            await self._send_request(ex, w, False)
        except ZeusError as exc:
            ex._fail(exc)

    def _unassign(self, ex: Exchange, w: WorkerHandle) -> None:
        """Undo ``_assign`` for a request that was never sent."""
        w.in_flight.pop(ex.id, None)
        ex.deadline = 0.0
        self._dispatch_queue()

    def _classify(
        self, w: WorkerHandle, rc: int | None, cpu: float | None
    ) -> tuple[ExitCause, str]:
        limits = self.config.limits
        if w.kill_cause is not None and w.kill_cause is not ExitCause.STOPPED:
            return w.kill_cause, w.retire_reason or ""
        if rc == WorkerExit.BOOT_FAILURE:
            return ExitCause.BOOT_FAILURE, "the application could not be loaded"
        if rc == WorkerExit.MEMORY_LIMIT:
            return ExitCause.LIMIT, "memory limit (address space) reached"
        if w.process.oom_killed():
            return ExitCause.LIMIT, "memory limit (cgroup memory.max) reached"
        if limits.cpu_seconds and (
            rc == -signal.SIGXCPU
            or (rc == -signal.SIGKILL and cpu is not None and cpu >= limits.cpu_seconds)
        ):
            return ExitCause.LIMIT, f"CPU time limit ({limits.cpu_seconds}s) reached"
        if w.kill_cause is ExitCause.STOPPED:
            return ExitCause.STOPPED, ""
        return ExitCause.CRASH, ""

    def _reconcile(self, delay: float = 0.0) -> None:
        """Start workers until the active ones (plus those about to start) reach the target."""
        if not self._running or self._stopping or (self._halted and self._halted.done()):
            return
        missing = self._missing() - self._pending_spawns
        for _ in range(max(0, missing)):
            self._pending_spawns += 1
            asyncio.get_running_loop().call_later(delay, self._delayed_spawn)

    def _delayed_spawn(self) -> None:
        self._pending_spawns -= 1
        if not self._running or self._stopping:
            return
        if self._missing() > 0:
            self._spawn()

    def _missing(self) -> int:
        """Workers to start: the target less the active workers.  A retiring worker is not
        active, so one whose replacement died is counted here; the worker started for it
        links itself to it (``_spawn``)."""
        active = sum(
            1 for w in self._workers
            if w.state in (WState.STARTING, WState.READY) and w.retire_reason is None
        )
        return self._target - active

    def _halt(self, exc: BaseException) -> None:
        if self._halted is not None and not self._halted.done():
            self._halted.set_result(exc)

    async def _tick(self) -> None:
        """Periodic checks that have no event of their own: lifetime, RSS, heartbeats, boot."""
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.tick)
            now = monotonic()
            for w in list(self._workers):
                if w.state is WState.STARTING and w.process.age > cfg.boot_timeout:
                    log.error("worker %d (pid %d) did not become ready in %.0fs", w.index, w.pid,
                              cfg.boot_timeout)
                    self._exit_detail[w.index] = f"not ready in {cfg.boot_timeout:.0f}s"
                    self._stop_worker(w, ExitCause.CRASH, signal.SIGKILL)
                    continue
                if w.state is not WState.READY:
                    continue
                if w.retire_reason is None and (cfg.recycle.max_lifetime or cfg.recycle.max_rss):
                    rss = w.process.rss() if cfg.recycle.max_rss else None
                    reason = cfg.recycle.reason(0, 0, w.process.age, rss)
                    if reason:
                        self._retire(w, reason)
                if cfg.heartbeat_timeout and w.in_flight:
                    beat = w.region.memory.load_u64(Word.WORKER_HEARTBEAT)
                    if beat != w.heartbeat[0]:
                        w.heartbeat = (beat, now)
                    elif now - w.heartbeat[1] > cfg.heartbeat_timeout:
                        log.error("worker %d (pid %d) stopped its heartbeat for %.0fs: hung",
                                  w.index, w.pid, now - w.heartbeat[1])
                        self._exit_detail[w.index] = \
                            f"hung: no heartbeat for {now - w.heartbeat[1]:.0f}s"
                        for ex in list(w.in_flight.values()):
                            self._abandon(ex, RequestTimeout("worker hung"))
                        self._stop_worker(w, ExitCause.TIMEOUT, signal.SIGKILL)
                else:
                    w.heartbeat = (w.heartbeat[0], now)

    # ------------------------------------------------------------------ observing

    @property
    def workers(self) -> Sequence[WorkerHandle]:
        """The workers now known to the pool (any state but dead)."""
        return tuple(self._workers)

    def statistics(self) -> PoolStatistics:
        """A snapshot for metrics: busy/idle workers, queue depth, restarts by cause."""
        stats = []
        for w in self._workers:
            st = w.channel.statistics() if not w.channel.closed else None
            stats.append(WorkerStatistics(
                w.index, w.pid, w.state.value, len(w.in_flight), w.requests, w.process.rss(),
                w.process.cpu_seconds(), st.arena_in_use if st else 0,
                w.region.geometry.req_arena_size,
            ))
        ready = [w for w in self._workers if w.state is WState.READY]
        busy = sum(1 for w in ready if w.in_flight)
        return PoolStatistics(
            workers=tuple(stats),
            busy=busy,
            idle=len(ready) - busy,
            queued=len(self._queue),
            in_flight=sum(len(w.in_flight) for w in self._workers),
            completed=self._completed,
            restarts=dict(self._restarts),
            queue_wait_total=self._queue_wait,
            queue_waits=self._queue_waits,
            space_waits=self._space_waits + sum(w.pump.space_waits for w in self._workers),
        )

    def __repr__(self) -> str:
        return f"<Pool workers={len(self._workers)}/{self._target} queued={len(self._queue)}>"


def worker_argv(app: str, interface: str = "auto") -> list[str]:
    """The command that runs ``module:app`` as a Zeus worker."""
    return [sys.executable, "-m", "zeus.worker", app, "--interface", interface]
