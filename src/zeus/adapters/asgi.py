"""ASGI 3 (HTTP and lifespan) inside a Zeus worker.

Theory of operation
-------------------
``serve_asgi(worker, app)`` runs an asyncio loop (uvloop when installed) in the worker process.
The loop sleeps on the worker's doorbell; a ``ChannelPump`` drains the request ring when it
rings and hands each message to ``ASGIServer._on_message``, synchronously:

* REQUEST_HEAD starts an ``_HTTPCycle`` and runs the application on it as a task, so several
  requests are in flight in one worker at once (as many as the pool's ``concurrency``).
* REQUEST_BODY messages are queued on their cycle *as arena messages*; ``receive()`` copies one
  out into the ``http.request`` event's bytes and releases it at once.  An application that
  reads slowly thus holds arena space, and the front waits for it: back-pressure without a
  buffer.  Because the ring and the arena are shared by every request of this worker, the
  arena space held this way is capped at half the request arena; beyond that, chunks are
  copied out and released on arrival, so one request that never reads its body cannot stall
  the others (its body is then bounded by the front's body-size limit).
* CANCEL (the client left, or the request timed out) makes ``receive()`` return
  ``http.disconnect``; later sends are dropped silently.

Every request that reaches a cycle ends with exactly one terminal message from this side: a
head or body with END, or a CANCEL with END -- sent when the application fails after the head
went out, returns without finishing its response, or after the front cancelled (which lets the
front forget the request).  An application that fails before the head went out gets a 500.

Lifespan: ``lifespan.startup`` runs before the first request is read.  An application that
raises before it ever calls ``receive()`` on the lifespan scope (``assert scope["type"] ==
"http"``) does not support lifespan and is served anyway; one that reports
``lifespan.startup.failed`` or raises during startup cannot boot: the worker prints one line and
exits with WorkerExit.BOOT_FAILURE, which stops the supervisor's restart loop.  Handed a
``Worker`` factory rather than a ``Worker``, ``serve_asgi`` attaches to the channel only after
startup, so the front sees this worker ready only once the application is.

Signals only record (``loop.add_signal_handler``); the main coroutine acts.  TERM: answer new
requests 503, let those in flight finish (at most ``GRACEFUL_TIMEOUT`` seconds), run lifespan
shutdown, close the channel, exit 0.  INT: the same without waiting.  The front gone (the pump
fails with PeerLostError, or the once-a-second heartbeat finds its process dead): cancel
everything, run lifespan shutdown, exit WorkerExit.PEER_LOST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from zeus.aiochannel import ChannelPump
from zeus.channel import Channel, Message, decode_request_head, encode_response_head
from zeus.core.codec import Headers, RequestHead
from zeus.core.layout import Flag, Kind
from zeus.errors import PeerBrokenError, PeerLostError, ZeusError
from zeus.exitcodes import WorkerExit
from zeus.worker import HEARTBEAT_INTERVAL, Worker

log = logging.getLogger("zeus.asgi")

Scope = dict[str, Any]
Event = dict[str, Any]
Receive = Callable[[], Awaitable[Event]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GRACEFUL_TIMEOUT: Final = 30.0  # TERM: how long requests in flight may take to finish
CANCEL_GRACE: Final = 5.0  # how long cancelled tasks may take to unwind
LIFESPAN_SHUTDOWN_TIMEOUT: Final = 30.0
ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.3"}
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE: Final = re.compile(rb"[\r\n\x00]")
_ERROR_HEAD: Final = encode_response_head(500, [
    (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"22"),
])
_ERROR_BODY: Final = b"Internal Server Error\n"
_UNAVAILABLE_BODY: Final = b"Service Unavailable\n"


def serve_asgi(worker: Worker | Callable[[], Worker], app: ASGIApp) -> None:
    """Serve ``app`` on ``worker``'s channel until told to stop or the front goes away.

    ``worker`` may be a factory (``Worker.connect``): it is then called after lifespan startup.
    Exits the process with a WorkerExit code unless the stop was asked for.
    """
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(ASGIServer(app, worker).main())
    if code != WorkerExit.OK:
        raise SystemExit(code)


class Lifespan:
    """The ASGI lifespan protocol, run as one task beside the requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._received = False  # the app called receive(): it speaks lifespan
        loop = asyncio.get_running_loop()
        self._started: asyncio.Future[str | None] = loop.create_future()
        self._stopped: asyncio.Future[str | None] = loop.create_future()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> str | None:
        """Run startup; the reason it failed, or None (also when lifespan is unsupported)."""
        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._events.put_nowait({"type": "lifespan.startup"})
        self._task = asyncio.create_task(self._run(scope), name="zeus-lifespan")
        waits: set[asyncio.Future[Any]] = {self._started, self._task}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self._started.done():
            return self._started.result()
        exc = self._task.exception()
        if not self._received or exc is None:
            # Raised before looking at the protocol, or returned without answering: the app
            # does not do lifespan (uvicorn's "auto").
            self.supported = False
            log.debug("ASGI lifespan unsupported by the application (%r)", exc)
            return None
        return f"{type(exc).__name__}: {exc}"

    async def shutdown(self, timeout: float = LIFESPAN_SHUTDOWN_TIMEOUT) -> None:
        """Run shutdown (bounded by ``timeout``); failures are logged."""
        task = self._task
        if task is None or not self.supported or task.done():
            return
        self._events.put_nowait({"type": "lifespan.shutdown"})
        waits: set[asyncio.Future[Any]] = {self._stopped, task}
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._stopped.done() and self._stopped.result() is not None:
            log.error("lifespan shutdown failed: %s", self._stopped.result())
        elif not self._stopped.done():
            if task.done() and task.exception() is not None:
                exc = task.exception()
                log.error("lifespan shutdown failed: %s: %s", type(exc).__name__, exc)
            elif not task.done():
                log.error("lifespan shutdown did not finish in %.0fs", timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _run(self, scope: Scope) -> None:
        await self.app(scope, self._receive, self._send)

    async def _receive(self) -> Event:
        self._received = True
        return await self._events.get()

    async def _send(self, message: Mapping[str, Any]) -> None:
        kind = message["type"]
        reason = str(message.get("message", "")) or "no reason given"
        if kind == "lifespan.startup.complete":
            _resolve(self._started, None)
        elif kind == "lifespan.startup.failed":
            _resolve(self._started, reason)
        elif kind == "lifespan.shutdown.complete":
            _resolve(self._stopped, None)
        elif kind == "lifespan.shutdown.failed":
            _resolve(self._stopped, reason)
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")


def _resolve(fut: asyncio.Future[str | None], value: str | None) -> None:
    if fut.done():
        raise RuntimeError("lifespan message sent twice")
    fut.set_result(value)


class ASGIServer:
    """Serves one ASGI application on one worker channel; see the module docstring."""

    def __init__(self, app: ASGIApp, worker: Worker | Callable[[], Worker]) -> None:
        self.app = app
        self._worker_source = worker
        self.worker: Worker | None = worker if isinstance(worker, Worker) else None
        self.pump: ChannelPump | None = None
        self.lifespan: Lifespan | None = None
        self._cycles: dict[int, _HTTPCycle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._partial_heads: dict[int, bytearray] = {}
        self._held = 0  # arena bytes held by queued request bodies
        self._hold_limit = 0
        self._draining = False
        self._stop = asyncio.Event()  # stop serving (TERM, INT, the front gone)
        self._hurry = asyncio.Event()  # ... without waiting for requests in flight
        self._code = WorkerExit.OK
        self.requests_served = 0

    # ---------------------------------------------------------------- lifecycle

    async def main(self) -> WorkerExit:
        """Start, serve until told to stop, shut down; the worker's exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGINT, self._on_int)
        self.lifespan = lifespan = Lifespan(self.app)
        startup = asyncio.ensure_future(lifespan.startup())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not startup.done():  # told to stop while starting up
            startup.cancel()
            await lifespan.shutdown(CANCEL_GRACE)
            if self.worker is not None:
                self.worker.channel.close()
            return WorkerExit.OK
        failure = startup.result()
        if failure is not None:
            print(f"zeus worker: ASGI lifespan startup failed: {failure}", file=sys.stderr)
            if self.worker is not None:
                self.worker.channel.close()
            return WorkerExit.BOOT_FAILURE
        if self.worker is None:
            source = self._worker_source
            assert not isinstance(source, Worker)
            self.worker = source()
        channel = self.worker.channel
        self._hold_limit = channel.region.geometry.req_arena_size // 2
        self.pump = pump = ChannelPump(channel, self._on_message, on_error=self._on_pump_failed)
        beat = asyncio.create_task(self._heartbeat(channel), name="zeus-heartbeat")
        try:
            await self._stop.wait()
            await self._drain()
            await lifespan.shutdown()
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            pump.close()
        return self._code

    def _on_term(self) -> None:
        if self._stop.is_set():
            self._hurry.set()  # a second TERM: do not wait any more
        self._draining = True
        self._stop.set()

    def _on_int(self) -> None:
        self._hurry.set()
        self._draining = True
        self._stop.set()

    def _on_pump_failed(self, exc: BaseException) -> None:
        if self._code == WorkerExit.OK:
            if isinstance(exc, PeerBrokenError):
                log.error("front broke the channel: %s", exc)
                self._code = WorkerExit.PEER_BROKEN
            else:
                self._code = WorkerExit.PEER_LOST
        self._hurry.set()
        self._draining = True
        self._stop.set()

    async def _drain(self) -> None:
        """Let requests in flight finish (unless quick), then cancel what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GRACEFUL_TIMEOUT
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while self._tasks and not hurry.done() and loop.time() < deadline:
                waits: set[asyncio.Future[Any]] = {*self._tasks, hurry}
                await asyncio.wait(waits, timeout=deadline - loop.time(),
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)

    async def _heartbeat(self, channel: Channel) -> None:
        """Bump the heartbeat once a second from the loop; notice a front that died."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            channel.heartbeat()
            try:
                channel.check_peer()
            except PeerLostError as exc:
                self._on_pump_failed(exc)
                return

    # ---------------------------------------------------------------- messages

    def _on_message(self, msg: Message) -> None:
        kind = msg.kind
        if kind == Kind.REQUEST_HEAD:
            self._on_head(msg)
        elif kind == Kind.REQUEST_BODY:
            cycle = self._cycles.get(msg.id)
            if cycle is None:
                msg.release()  # the rest of a body whose request is over
            else:
                cycle.feed(msg)
        elif kind == Kind.CANCEL:
            msg.release()
            cycle = self._cycles.get(msg.id)
            if cycle is not None:
                cycle.disconnect()
        else:
            msg.release()
            raise PeerBrokenError(f"message kind {kind} from the front")

    def _on_head(self, msg: Message) -> None:
        msg_id, end = msg.id, msg.end
        with msg:
            partial = self._partial_heads.get(msg_id)
            if msg.more or partial is not None:
                if partial is None:
                    partial = self._partial_heads[msg_id] = bytearray()
                partial += msg.data
                if msg.more:
                    return
                del self._partial_heads[msg_id]
                head = decode_request_head(bytes(partial))
            else:
                head = decode_request_head(msg.data)
        if msg_id in self._cycles:
            raise PeerBrokenError(f"second request head for request {msg_id}")
        state = self.lifespan.state if self.lifespan is not None else {}
        cycle = _HTTPCycle(self, msg_id, head, end, state)
        self._cycles[msg_id] = cycle
        app = _unavailable if self._draining else self.app
        task = asyncio.create_task(cycle.run(app), name=f"zeus-request-{msg_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, cycle: _HTTPCycle) -> None:
        if self._cycles.get(cycle.id) is cycle:
            del self._cycles[cycle.id]
        self.requests_served += 1
        if self.worker is not None:
            self.worker.requests_served += 1

    def __repr__(self) -> str:
        return (
            f"<ASGIServer in_flight={len(self._cycles)} served={self.requests_served} "
            f"draining={self._draining}>"
        )


async def _unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    """What a worker that is stopping answers to a request that still reached it."""
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_UNAVAILABLE_BODY)).encode()),
        (b"retry-after", b"1"),
    ]})
    await send({"type": "http.response.body", "body": _UNAVAILABLE_BODY})


def build_scope(head: RequestHead, state: Mapping[str, Any]) -> Scope:
    """The ASGI HTTP connection scope of a request head."""
    raw_path = head.path
    return {
        "type": "http",
        "asgi": dict(ASGI_VERSION),
        "http_version": head.http_version.decode("latin-1"),
        "method": head.method.decode("latin-1"),
        "scheme": head.scheme,
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": head.query,
        "root_path": "",
        "headers": head.headers,
        "client": head.client,
        "server": head.server,
        "state": dict(state),
    }


class _HTTPCycle:
    """One request: its body queue, its receive() and send(), and the task running the app."""

    def __init__(
        self, server: ASGIServer, msg_id: int, head: RequestHead, body_done: bool,
        state: Mapping[str, Any],
    ) -> None:
        self.server = server
        self.id: Final = msg_id
        self.scope = build_scope(head, state)
        self._body: deque[Message | bytes] = deque()
        self._body_done = body_done  # the front has sent the whole body
        self._body_given = False  # receive() returned the last http.request
        self.disconnected = False  # the front cancelled
        self._start: bytes | None = None  # the encoded head, until the first body message
        self.head_sent = False
        self._finishing = False  # the app is sending its last body message
        self.complete = False  # the app's last body message has been sent
        self.ended = False  # our terminal message (END or CANCEL) has gone
        self._waiters: list[asyncio.Future[None]] = []  # receive() calls waiting for news

    # ---- from the front (called by the pump, synchronously)

    def feed(self, msg: Message) -> None:
        """Queue a body chunk (or copy it out if too much arena is held already)."""
        if msg.end:
            self._body_done = True
        if self.disconnected or (msg.data.nbytes == 0 and not msg.end):
            msg.release()
            return
        n = msg.data.nbytes
        server = self.server
        if server._held + n > server._hold_limit:
            with msg:
                self._body.append(bytes(msg.data))
        else:
            server._held += n
            self._body.append(msg)
        self._wake()

    def disconnect(self) -> None:
        self.disconnected = True
        self._drop_body()
        self._wake()

    def _drop_body(self) -> None:
        while self._body:
            item = self._body.popleft()
            if not isinstance(item, bytes):
                self.server._held -= item.data.nbytes
                item.release()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ---- the ASGI callables

    async def receive(self) -> Event:
        while True:
            if self.disconnected:
                return {"type": "http.disconnect"}
            if not self._body_given:
                if self._body:
                    item = self._body.popleft()
                    if isinstance(item, bytes):
                        data = item
                    else:
                        with item:
                            data = bytes(item.data)
                        self.server._held -= len(data)
                    more = bool(self._body) or not self._body_done
                    self._body_given = not more
                    return {"type": "http.request", "body": data, "more_body": more}
                if self._body_done:
                    self._body_given = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            elif self.complete:
                return {"type": "http.disconnect"}
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut

    async def send(self, message: Mapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._start is not None or self.head_sent or self._finishing:
                raise RuntimeError("http.response.start sent twice")
            self._start = _encode_head(message["status"], message.get("headers", ()))
            return
        if kind == "http.response.body":
            if self._start is None and not self.head_sent:
                raise RuntimeError("http.response.body before http.response.start")
            if self._finishing:
                raise RuntimeError("http.response.body after the response completed")
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if not isinstance(body, bytes | bytearray | memoryview):
                raise TypeError(f"http.response.body body is {type(body).__name__}, not bytes")
            self._finishing = not more
            if not self.disconnected:
                await self._send_body(body, more)
            if not more:
                # Only now: a task listening for http.disconnect (Starlette) may cancel the
                # sender as soon as it hears it.
                self.complete = True
                self._wake()
            return
        raise RuntimeError(f"unexpected ASGI message {kind!r}")

    async def _send_body(self, body: bytes | bytearray | memoryview, more: bool) -> None:
        pump = self.server.pump
        assert pump is not None
        end = 0 if more else int(Flag.END)
        if self._start is not None:
            start, self._start = self._start, None
            self.head_sent = True
            if not body and not more:
                self.ended = True
                await pump.send(self.id, start, Kind.RESPONSE_HEAD, Flag.END)
                return
            await pump.send(self.id, start, Kind.RESPONSE_HEAD, 0)
        if not body and more:
            return
        step = pump.channel.max_chunk
        view = body if isinstance(body, bytes) and len(body) <= step else (
            memoryview(body).cast("B"))
        n = len(view)
        pos = 0
        while True:
            last = pos + step >= n
            if last and end:
                self.ended = True
            await pump.send(self.id, view[pos : pos + step] if n > step else view,
                            Kind.RESPONSE_BODY, end if last else 0)
            if last:
                return
            pos += step
            if self.disconnected:
                return  # the rest is dropped; run() ends the request with CANCEL

    # ---- the task

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            pass  # the server is stopping: end the request below
        except Exception:
            if not self.disconnected:
                log.error("application failed on %s %s\n%s", self.scope["method"],
                          self.scope["path"], traceback.format_exc().rstrip())
                await self._answer_500()
        else:
            if not self.complete and not self.disconnected:
                what = "completing" if self.head_sent or self._start else "starting"
                log.error("application returned without %s its response on %s %s", what,
                          self.scope["method"], self.scope["path"])
                await self._answer_500()
        finally:
            self._drop_body()
            self.server._forget(self)
            if not self.ended:
                self.ended = True
                with contextlib.suppress(ZeusError, asyncio.CancelledError):
                    # Headers gone, or the front cancelled: abort (or acknowledge) it.
                    pump = self.server.pump
                    assert pump is not None
                    await pump.send(self.id, b"", Kind.CANCEL, Flag.END)

    async def _answer_500(self) -> None:
        if self.head_sent or self.ended:
            return
        self._start = None
        self._finishing = self.complete = self.ended = True
        pump = self.server.pump
        assert pump is not None
        with contextlib.suppress(ZeusError):
            await pump.send(self.id, _ERROR_HEAD, Kind.RESPONSE_HEAD, 0)
            await pump.send(self.id, _ERROR_BODY, Kind.RESPONSE_BODY, Flag.END)

    def __repr__(self) -> str:
        return (
            f"<HTTPCycle id={self.id} {self.scope['method']} {self.scope['path']!r} "
            f"complete={self.complete} disconnected={self.disconnected}>"
        )


def _encode_head(status: object, headers: Iterable[Iterable[bytes]]) -> bytes:
    """Validate and encode ``http.response.start``'s status and headers.

    A bad value is the application's error (-> 500 here), not something to hand the front,
    which would take it for a protocol violation by this worker.
    """
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise ValueError(f"invalid response status {status!r}")
    out: Headers = []
    for pair in headers:
        name, value = pair
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError(f"response header {name!r}: name and value must be bytes")
        if not _TOKEN.match(name):
            raise ValueError(f"invalid response header name {name!r}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"response header {name!r}: CR, LF or NUL in the value")
        out.append((name.lower(), value))
    return encode_response_head(status, out)

