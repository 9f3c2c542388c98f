"""One request handed to the pool, and the errors a request can end with.

The pool maps nothing to HTTP: the front turns WorkerLost into 502, RequestTimeout into 504,
Overloaded into 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from zeus.channel import Message
from zeus.core.codec import RequestHead, ResponseHead
from zeus.core.layout import Flag, Kind
from zeus.errors import PeerBrokenError, PeerLostError, ZeusError

if TYPE_CHECKING:
    from zeus.pool.core import Pool
    from zeus.pool.handle import WorkerHandle


class WorkerLost(ZeusError):
    """The worker handling a request died or broke; carries its pid and exit status."""

    def __init__(self, message: str, pid: int, status: str) -> None:
        super().__init__(message)
        self.pid = pid
        self.status = status


class RequestTimeout(ZeusError):
    """The request ran past its timeout; its worker is being replaced."""


class Overloaded(ZeusError):
    """No worker could take the request within the queue timeout (or the queue is full)."""


class BootFailure(ZeusError):
    """The application cannot boot: workers die before they ever become ready."""


class ResponseAborted(ZeusError):
    """The worker abandoned a response after starting it (the application failed midway)."""


class Exchange:
    """One request handed to the pool; its response comes back through here."""

    __slots__ = ("_chunks", "_error", "_head_buf", "_pool", "_waiter", "assigned_at", "deadline",
                 "finished", "handed", "head", "id", "notify", "queued_at", "queued_until",
                 "replay", "resend", "resp", "ring_seq", "touched", "worker")

    def __init__(self, pool: Pool, request_id: int, head: RequestHead,
                 replay: Sequence[bytes] | None) -> None:
        self.id: Final = request_id  # from the pool: unique, never reused
        self._pool = pool
        self.head = head
        # The whole body when known up front, in the pieces it arrived in (lets a retry happen)
        self.replay = replay
        self.worker: WorkerHandle | None = None
        self.ring_seq = 0  # the worker's request-ring position just after our head was sent
        self.handed = False  # head and body are all in the worker's ring
        self.resend = False  # its worker died before taking it while it was being sent
        self.resp: ResponseHead | None = None  # the response head, once it came
        self._head_buf: bytearray | None = None  # a head arriving in pieces
        self._chunks: list[Message] = []  # a list: a few at a time, and compiled list ops
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.finished = False  # the worker sent the end of the response
        self.assigned_at = 0.0  # loop time it was given to its worker (adaptive prefetch)
        self.deadline = 0.0  # loop time its request timeout expires; 0: none (see Pool)
        self.queued_until = 0.0  # loop time its wait in the pool's queue ends
        self.queued_at = 0.0  # when it entered the pool's queue (callback mode; metrics)
        # Callback mode (Pool.dispatch): called, once per batch of news, instead of waking a
        # waiter; the caller reads ``resp``, ``_chunks``, ``finished`` and ``_error`` itself.
        self.notify: Callable[[], None] | None = None
        self.touched = False  # queued for ``notify`` in the pool's current batch

    async def response(self) -> ResponseHead:
        """Wait for the response head.  Cancelling the wait does not cancel the request.

        The wait is on a throwaway waiter (woken by ``_wake``): a cancelled caller leaves the
        exchange intact -- what ``asyncio.shield`` would do, without its two futures and two
        callbacks per request.  Fails with the exchange's error if it failed before the head.
        """
        while self.resp is None:
            if self._error is not None:
                raise self._error
            self._waiter = self._pool.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.resp

    async def next_chunk(self) -> Message | None:
        """The next body chunk (release it when written), or None at the end."""
        while True:
            if self._chunks:
                return self._chunks.pop(0)
            if self._error is not None:
                raise self._error
            if self.finished:
                return None
            self._waiter = self._pool.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send_body(self, data: bytes | memoryview, *, end: bool = False) -> None:
        """Stream a piece of the request body to the worker (waits on back-pressure)."""
        w = self.worker
        if w is None or self._error is not None:
            raise self._error or ZeusError("request not dispatched")
        try:
            await w.pump.send(self.id, data, Kind.REQUEST_BODY, Flag.END if end else 0)
        except (PeerLostError, PeerBrokenError) as exc:
            raise self._error or w.lost_error() from exc

    def cancel(self) -> None:
        """The client is gone: tell the worker, drop whatever arrives later."""
        if self.finished or self._error is not None:
            self._discard()
            return
        self._pool._abandon(self, None)

    # -- called by the pool ---------------------------------------------------

    def _deliver(self, msg: Message) -> None:
        self._chunks.append(msg)
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self.finished:
            self._error = exc
            self._discard()
            self._wake()

    def _finish(self) -> None:
        self.finished = True
        self._wake()

    def _wake(self) -> None:
        if self.notify is not None:
            if not self.touched:
                self.touched = True
                self._pool._touch(self)
            return
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _discard(self) -> None:
        while self._chunks:
            self._chunks.pop(0).release()

    def __repr__(self) -> str:
        return f"<Exchange id={self.id} {self.head.method!r} {self.head.target[:40]!r}>"
