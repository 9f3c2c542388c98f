"""The HTTP/1.1 front: one asyncio protocol per client connection, parsing with httptools.

Theory of operation
-------------------
``HttpProtocol`` parses with llhttp (httptools) and keeps a FIFO of requests per connection:
the first is being answered, the ones behind it (pipelining) wait with their bodies buffered up
to a bound; responses leave in request order.  The request being answered is handed to the
worker pool as soon as its head is complete, and its body streams to the worker's arena as it
arrives (the front never holds a whole body); a body that arrived complete with its head goes
in the same hand-off, which lets the pool retry it on another worker if the first dies before
taking it.

The response comes back as arena messages; each is written to the socket straight from shared
memory and released once written.  When the client reads slowly the transport pauses us
(``pause_writing``), we stop taking chunks from the arena, the worker's arena part fills up and
the worker waits: back-pressure from the client socket to the application, with at most
``write_high_water`` bytes buffered in the front per connection.

What the front answers itself, without a worker: malformed requests (400), oversized request
lines, headers and bodies (414, 431, 413), smuggling attempts (400: Content-Length with
Transfer-Encoding, conflicting lengths), clients too slow to send their head or body (408),
no worker available in time (503), a worker lost mid-request (502), a request timeout (504).
A client that disconnects cancels its request in the worker.  No traceback ever reaches a
client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from http import HTTPStatus
from os import writev
from time import monotonic
from typing import TYPE_CHECKING, Final, cast

import httptools

from zeus._http import frame_response_head, parse_request
from zeus.channel import Message
from zeus.core.codec import RequestHead, ResponseHead
from zeus.errors import ZeusError
from zeus.front.limits import HttpLimits
from zeus.pool import Exchange, Overloaded, RequestTimeout

if TYPE_CHECKING:
    from zeus._http import ParsedRequest, ParseLimits
    from zeus.front.accesslog import AccessLog
    from zeus.front.health import Health
    from zeus.front.metrics import FrontMetrics
    from zeus.front.server import FrontServer

log = logging.getLogger("zeus.front")

_NO_BODY_STATUS: Final = frozenset({204, 304})
_WRITE_PIECE: Final = 256 * 1024
# A body received whole before its request is submitted goes to the worker in the pieces it
# arrived in, up to this many (a 1 MiB upload comes in some 16 socket reads); more are joined.
_MAX_PIECES: Final = 32
_STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode())
                         for s in HTTPStatus}


def parse_limits(lim: HttpLimits) -> ParseLimits:
    """The limits ``zeus._http.parse_request`` takes, as the one tuple it takes them in."""
    return (lim.max_request_line, lim.max_headers, lim.max_header_size, lim.max_headers_total,
            lim.max_body)


class _Reject(Exception):
    """A request the front refuses itself, with the status to answer."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Request:
    """One parsed (or being parsed) request and its buffered body."""

    __slots__ = (
        "body",
        "body_bytes",
        "chunks",
        "complete",
        "content_length",
        "expect_continue",
        "framing",
        "has_host",
        "has_te",
        "header_bytes",
        "headers",
        "keep_alive",
        "method",
        "received",
        "started",
        "url",
        "version",
        "waiter",
    )

    def __init__(self, method: bytes = b"", url: bytes | bytearray | None = None,
                 version: str = "1.1", headers: list[tuple[bytes, bytes]] | None = None,
                 keep_alive: bool = True, content_length: int | None = None,
                 complete: bool = False) -> None:
        self.url = bytearray() if url is None else url
        self.headers = [] if headers is None else headers
        self.header_bytes = 0
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.has_te = False
        self.has_host = False
        self.chunks = 0  # chunk-size lines parsed
        self.framing = 0  # chunk framing bytes beyond the allowance (see data_received)
        self.expect_continue = False
        self.body: deque[bytes] | None = None  # made for the first piece (most have none)
        self.body_bytes = 0  # buffered in the front now
        self.received = 0  # received in all (the body limit)
        self.complete = complete
        self.waiter: asyncio.Future[None] | None = None
        self.started = monotonic()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Answer:
    """The state of the response being written for the request at the head of the queue."""

    __slots__ = ("chunked", "cut", "ex", "forward", "keep", "length", "no_body", "offset",
                 "pending", "req", "resp", "sent", "started")

    def __init__(self, req: _Request, ex: Exchange, started: float,
                 forward: asyncio.Task[None] | None) -> None:
        self.req = req
        self.ex = ex
        self.started = started
        self.forward = forward  # the task streaming the request body, if any
        self.resp: ResponseHead | None = None  # set once the head came (see _begin)
        self.keep = False
        self.length: int | None = None  # the application's Content-Length
        self.no_body = False
        self.chunked = False
        self.pending: bytes | None = None  # the framed head, until the first body bytes
        self.sent = 0  # body bytes written
        self.offset = 0  # written of the chunk being written (see _feed)
        self.cut = 0  # bytes of that chunk to write (less if past the Content-Length)


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.pool = server.pool
        self.limits: HttpLimits = server.limits
        self.parse_limits: ParseLimits = server.parse_limits  # see parse_limits()
        # The server's fixed parts, read here once: FrontServer is interpreted, and each look
        # at its attributes from this compiled module is a dictionary look-up.
        self.metrics: FrontMetrics = server.metrics
        self.access_log: AccessLog | None = server.access_log
        self.health: Health | None = server.health if server.health.on_app_bind else None
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parsing: _Request | None = None
        self.queue: deque[_Request] = deque()
        self.task: asyncio.Task[None] | None = None  # submitting a streamed request
        self.answer: _Answer | None = None  # the response being written
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when ``timer`` fires (loop time)
        self.deadline = 0.0  # when ``on_deadline`` is due (loop time)
        self.on_deadline: Callable[[], None] | None = None
        self.closing = False
        self.reading_paused = False
        self.write_paused = False
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.exchange: Exchange | None = None  # the one being answered (to cancel it)
        self.requests = 0
        self.rejected: _Reject | None = None  # httptools wraps what callbacks raise
        self.response_started = False
        self.eof = False
        self.fd = -1  # the socket, for writes straight from shared memory
        self.drain_seen = False  # close_if_idle found it idle once (graceful shutdown)
        # Callbacks bound once per connection: looking up a method makes a new bound-method
        # object every time, and these are handed out for every request.
        self.exchange_cb: Callable[[], None] = self._on_exchange
        self.idle_cb: Callable[[], None] = self._idle_timeout
        self.header_cb: Callable[[], None] = self._header_timeout
        self.body_cb: Callable[[], None] = self._body_timeout

    # ------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        transport.set_write_buffer_limits(high=self.limits.write_high_water)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        sock_obj = transport.get_extra_info("socket")
        self.fd = sock_obj.fileno() if sock_obj is not None else -1
        self.local = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None
        self.server.connections.add(self)
        self._arm(self.limits.keepalive_timeout, self.idle_cb)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self._disarm()
        if self.exchange is not None:
            self.exchange.cancel()
            self.exchange = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.answer is not None:
            if self.answer.forward is not None:
                self.answer.forward.cancel()
            self.answer = None
        for req in self.queue:
            req.wake()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.metrics.client_pauses += 1  # back-pressure from a slow client

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.answer is not None:
            self._on_exchange()  # the arena chunks left waiting for the client

    def eof_received(self) -> bool | None:
        """The client half-closed: answer the complete requests, then close."""
        self.eof = True
        if self.closing:  # we half-closed first (close_if_idle): both ends are done
            if self.transport is not None:
                self.transport.close()
            return True
        if self.queue and not self.queue[0].complete:
            self._abandon_current()  # its body will never come
            return True
        if not self.queue:
            self._close()  # idle, or in the middle of a head that will never end
        else:
            self.parsing = None
        return True

    # --------------------------------------------------------------- parsing

    def data_received(self, data: bytes) -> None:
        if self.closing or self.eof:
            return  # eof: half-closed, or nothing more is read (see _reject and below)
        if self.parsing is None:
            # Between requests: ordinary complete ones are parsed in one C call each
            # (``zeus._http.parse_request``); the first it declines -- incomplete, unusual or
            # invalid -- and everything after it go to llhttp, which also gives the errors.
            limits = self.parse_limits
            pos, n = 0, len(data)
            while pos < n:
                r = parse_request(data, pos, limits)
                if r is None:
                    break
                pos = r[7]
                self._parsed(r, data)
                if self.closing:
                    return
                if not r[4]:
                    # Connection: close -- llhttp refuses data after it (a 400 for the next
                    # request, see _reject): answer this one, read nothing more.
                    self.eof = True
                    return
            if pos:
                if pos == n:
                    return
                data = data[pos:]
        chunking = self.parsing  # a chunked body in progress: see below
        if chunking is not None and chunking.has_te and chunking.method:
            body_mark, chunks_mark = chunking.received, chunking.chunks
        else:
            chunking = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except (httptools.HttpParserError, _Reject) as exc:
            rej = self.rejected
            if rej is not None:
                self._reject(rej.status, rej.detail)
            else:
                self._reject(400, _parser_detail(exc))
        if chunking is not None and chunking is self.parsing and not self.closing:
            # All of ``data`` was this chunked body: what is not body is chunk framing (size
            # lines, extensions, trailers).  Allow 16 bytes a chunk and one per body byte; past
            # that, bound the excess, or a client streams an endless chunk extension that no
            # body limit or body timeout ever sees (as Go does since CVE-2023-39326).
            body = chunking.received - body_mark
            excess = chunking.framing + len(data) - 2 * body - 16 * (chunking.chunks - chunks_mark)
            chunking.framing = max(0, excess)
            if excess > self.limits.max_header_size:
                self._reject(400, "too much chunk framing (chunk extensions?)")
        if self.parsing is not None and self.parsing.body_bytes > self.limits.read_high_water:
            self._pause_reading()

    def _parsed(self, r: ParsedRequest, data: bytes) -> None:
        """A whole request parsed by ``parse_request``: what the llhttp callbacks do for one
        (the checks of on_header and on_headers_complete hold by the parser's rules)."""
        method, url, version, headers, keep_alive, length, start, end = r
        req = _Request(method, url, version, headers, keep_alive, length, True)
        if end > start:
            req.body = deque((data[start:end],))
            req.body_bytes = req.received = end - start
        queue = self.queue
        queue.append(req)
        if len(queue) == 1:
            self._disarm()
            self._start_next(req.started)
        elif len(queue) > self.limits.max_pipeline:
            self._pause_reading()

    def _refuse(self, status: int, detail: str) -> None:
        """Refuse the request being parsed (raised through httptools, which wraps it)."""
        self.rejected = _Reject(status, detail)
        raise self.rejected

    def on_message_begin(self) -> None:
        req = _Request()
        self.parsing = req
        if not self.queue:
            self._arm(self.limits.header_timeout, self.header_cb)

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.url += url
        if len(req.url) > self.limits.max_request_line:
            self._refuse(414, f"request target over {self.limits.max_request_line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        lim = self.limits
        size = len(name) + len(value)
        req.header_bytes += size
        if len(req.headers) >= lim.max_headers:
            self._refuse(431, f"more than {lim.max_headers} header fields")
        if size > lim.max_header_size or req.header_bytes > lim.max_headers_total:
            self._refuse(431, "header fields too large")
        lname = name.lower()
        if lname == b"content-length":
            try:
                n = int(value)
            except ValueError:
                self._refuse(400, "invalid Content-Length")
            if n < 0 or not value.strip().isdigit():
                self._refuse(400, "invalid Content-Length")
            if req.content_length is not None and req.content_length != n:
                self._refuse(400, "conflicting Content-Length headers")
            req.content_length = n
        elif lname == b"transfer-encoding":
            if req.has_te or value.strip().lower() != b"chunked":
                # Only a single "chunked" is understood.  A request whose final coding is
                # not chunked has no reliable length: 400 and close (RFC 9112 §6.3).
                self._refuse(400, "unsupported Transfer-Encoding")
            req.has_te = True
        elif lname == b"expect" and value.lower() == b"100-continue":
            req.expect_continue = True
        elif lname == b"host":
            if req.has_host:
                self._refuse(400, "more than one Host header")  # RFC 9112 §3.2
            req.has_host = True
        req.headers.append((lname, value))

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        if req.has_te and req.content_length is not None:
            self._refuse(400, "Content-Length with Transfer-Encoding")
        lim = self.limits
        if lim.max_body and req.content_length is not None and req.content_length > lim.max_body:
            self._refuse(413, f"body over {lim.max_body} bytes")
        parser = self.parser
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.keep_alive = bool(parser.should_keep_alive())
        if req.version not in ("1.1", "1.0"):
            self._refuse(505 if req.version.startswith(("2", "3")) else 400, "bad HTTP version")
        if not req.has_host and req.version == "1.1":
            self._refuse(400, "missing Host header")  # RFC 9112 §3.2: MUST
        if req.method == b"CONNECT":
            # A tunnel (RFC 9110 §9.3.6) is a proxy's job; a worker cannot carry one.
            self._refuse(501, "CONNECT is not supported")
        if req.has_te and req.version == "1.0":
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
            self._refuse(400, "Transfer-Encoding in an HTTP/1.0 request")
        self.queue.append(req)
        if len(self.queue) == 1:
            self._disarm()
            if req.has_te or req.content_length:
                self._arm(lim.body_timeout, self.body_cb)
            self._start_next()
        elif len(self.queue) > lim.max_pipeline:
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        if req.body is None:
            req.body = deque()
        req.body.append(body)
        req.body_bytes += len(body)
        req.received += len(body)
        lim = self.limits
        if lim.max_body and req.received > lim.max_body:
            self._refuse(413, f"body over {lim.max_body} bytes")
        if self.queue and req is self.queue[0]:
            self._arm(lim.body_timeout, self.body_cb)
        req.wake()

    def on_chunk_header(self) -> None:
        req = self.parsing
        assert req is not None
        req.chunks += 1  # progress: the chunk-size line ended (see data_received)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        req.complete = True
        self.parsing = None
        if self.queue and req is self.queue[0]:
            self._disarm()
        req.wake()

    # ------------------------------------------------------------- serving
    #
    # The request at the head of ``queue`` is being answered.  A request whose body is known
    # up front (none, or received whole) goes to the pool with ``Pool.dispatch``: no task, no
    # future; the pool calls ``_on_exchange`` back at the end of each batch of ring messages,
    # and the response is written from there.  Only a body still streaming in needs a task
    # (``_stream``), until its exchange exists; then it is answered the same way.

    def _start_next(self, now: float = 0.0) -> None:
        """Answer the request at the head of the queue; ``now``: monotonic() if the caller
        has just read it (a request parsed this instant), so the clock is read once."""
        if self.closing or not self.queue:
            return
        req = self.queue[0]
        try:
            health = self.health
            if health is not None:  # --health-path / --ready-path: the front answers
                probed = health.answer(self.transport, req.method, req.url, req.keep_alive)
                if probed is not None:
                    self._done(req, probed)
                    return
            head = RequestHead(
                method=req.method,
                target=url if isinstance(url := req.url, bytes) else bytes(url),
                headers=req.headers,
                http_version=b"1.1" if req.version == "1.1" else req.version.encode(),
                scheme="http",
                client=self.client,
                server=self.local,
            )
            if (req.has_te or req.content_length) and not (
                req.complete and req.body_bytes <= 1 << 20
            ):
                self.task = self.loop.create_task(self._stream(req, head))
                return
            # The pieces go into the arena as they came off the socket (no 1 MiB join); a
            # body in many small pieces (tiny chunks) is joined: one message each would cost
            # more than the copy.
            pieces = req.body
            body: tuple[bytes, ...] = ()
            if pieces is not None:
                body = tuple(pieces) if len(pieces) <= _MAX_PIECES else (b"".join(pieces),)
                pieces.clear()
            started = now or monotonic()
            try:
                ex = self.pool.dispatch(head, body, self.exchange_cb)
            except Overloaded as exc:
                self._log_access(req, 503, self._write_error(503, str(exc),
                                                             close=not req.complete))
                self._done(req, self._finish_unread(req, None))
                return
            self._attach(req, ex, started, None)
        except Exception:
            self._internal_error(req)

    async def _stream(self, req: _Request, head: RequestHead) -> None:
        """Submit a request whose body is still arriving, and forward the body as it comes."""
        started = monotonic()
        try:
            ex = await self.pool.submit(head, streaming=True)
            if req.expect_continue and not req.body_bytes and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            forward = self.loop.create_task(self._forward_body(req, ex.send_body))
        except asyncio.CancelledError:
            return
        except ZeusError as exc:
            self._done(req, self._failed(req, exc, None))
            return
        except Exception:
            self._internal_error(req)
            return
        if self.closing:
            forward.cancel()
            ex.cancel()
            return
        self._attach(req, ex, started, forward)

    def _attach(self, req: _Request, ex: Exchange, started: float,
                forward: asyncio.Task[None] | None) -> None:
        self.exchange = ex
        self.answer = _Answer(req, ex, started, forward)
        ex.notify = self.exchange_cb
        if ex.touched or ex.finished or ex._error is not None or ex.resp is not None:
            self._on_exchange()  # news that came before we listened

    def _on_exchange(self) -> None:
        """The pool has news of the request being answered: write what can be written."""
        a = self.answer
        if a is None or self.closing:
            return
        ex = a.ex
        try:
            if a.resp is None:
                if ex._error is not None:
                    self._end(a, self._failed(a.req, ex._error, a.forward))
                    return
                resp = ex.resp
                if resp is None:
                    return
                self._begin(a, resp)
            chunks = ex._chunks
            # A paused transport (slow client) leaves the rest in the arena: the worker
            # waits for space, and resume_writing brings us back here.
            while chunks and not self.write_paused:
                chunk = chunks[0]
                if self._feed(a, chunk):
                    chunks.pop(0)
                    chunk.release()  # safe: _send never leaves arena bytes queued
                if self.closing:
                    return  # aborted: the exchange was cancelled, its chunks released
            if ex._error is not None:
                self._end(a, self._lost_midway(a, ex._error))
            elif ex.finished and not chunks:
                self._end(a, self._complete(a))
        except Exception:
            self._internal_error(a.req)

    def _begin(self, a: _Answer, resp: ResponseHead) -> None:
        """The response head: what the worker sent, framed and checked for the client.

        Hop-by-hop fields are dropped (a "close" in Connection ends keep-alive), the first
        well-formed Content-Length is kept and any other dropped (from the application, so
        checked like a client's: two lengths, a sign, "1_0" or spaces would frame the
        response differently for different clients), chunked framing is added when a body
        has no length, Server and Date when the application set none (the loop in C:
        ``frame_response_head``)."""
        req = a.req
        # A response that comes before the request's body is all in (the application did not
        # wait for it) announces the close: the rest of the body will not be read.
        keep = req.keep_alive and req.complete and not self.server.draining
        status = resp.status
        a.no_body = req.method == b"HEAD" or status in _NO_BODY_STATUS or status < 200
        a.pending, a.keep, a.length, a.chunked = frame_response_head(
            _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status, resp.headers,
            keep, a.no_body, req.version == "1.1", self.server.date_header)
        a.resp = resp  # the head goes out (a.pending) with the first body bytes
        self.response_started = True

    def _feed(self, a: _Answer, chunk: Message) -> bool:
        """Write the next piece of a body chunk straight from the arena (with the head, if
        still pending); True once the whole chunk is written.

        At most ``_WRITE_PIECE`` bytes per call: a slow client pauses us between pieces, so
        the transport never holds more than a piece beyond its high-water mark."""
        if a.no_body:
            return True
        data = chunk.data
        start = a.offset
        size = -1  # the whole chunk's, when starting it
        if start == 0:
            n = size = data.nbytes
            if a.length is not None and a.sent + n > a.length:
                a.keep = False  # the application sent more than it announced
                n = a.length - a.sent
            a.cut = n
        end = min(start + _WRITE_PIECE, a.cut)
        parts: list[bytes | memoryview] = []
        if a.pending is not None:
            parts.append(a.pending)
            a.pending = None
        if a.chunked and start == 0:
            parts.append(b"%x\r\n" % a.cut)
        parts.append(data if end == size else data[start:end])  # whole: no new view
        if a.chunked and end >= a.cut:
            parts.append(b"\r\n")
        self._send(parts)
        a.sent += end - start
        if end >= a.cut:
            a.offset = 0
            return True
        a.offset = end
        return False

    def _complete(self, a: _Answer) -> bool:
        """The worker ended the response: finish it; return whether to keep the connection."""
        keep = a.keep
        tail = b"0\r\n\r\n" if a.chunked else b""
        if (a.pending is not None or tail) and self.transport is not None:
            self.transport.write((a.pending or b"") + tail)
        if not a.chunked and a.length is not None and a.sent < a.length and not a.no_body:
            keep = False  # announced more than it sent: the client would wait forever
            self._abort()
        if a.forward is not None and not a.forward.done():
            # The worker answered without the rest of the body.  All received: only the
            # forwarding lags, the connection stays (as announced); else it closes (as
            # announced by _begin).
            a.forward.cancel()
            keep = keep and a.req.complete
        assert a.resp is not None
        self._access(a.req, a.resp.status, a.sent, a.started, a.resp.headers)
        return keep

    def _lost_midway(self, a: _Answer, exc: BaseException) -> bool:
        """The exchange failed after the response head came."""
        req = a.req
        if a.pending is not None and not a.no_body:
            # Nothing of the response has left (the head waits for the first body bytes):
            # the client still gets a clean 502, and keeps its connection.
            log.warning("502 for %s %s (lost before its body): %s", req.method.decode("latin-1"),
                        bytes(req.url[:200]).decode("latin-1"), exc)
            self._log_access(req, 502, self._write_error(
                502, "the worker handling this request was lost", close=not req.complete))
            return self._finish_unread(req, a.forward)
        log.warning("response to %s %s cut short: %s", req.method.decode("latin-1"),
                    bytes(req.url[:200]).decode("latin-1"), exc)
        if a.forward is not None:
            a.forward.cancel()
        self._abort()
        return False

    def _failed(self, req: _Request, exc: BaseException,
                forward: asyncio.Task[None] | None) -> bool:
        """The exchange failed before any response: answer 503, 504 or 502 ourselves.

        The connection stays only if the request's body is all in (announced either way)."""
        close = not req.complete
        if isinstance(exc, Overloaded):
            self._log_access(req, 503, self._write_error(503, str(exc), close=close))
        elif isinstance(exc, RequestTimeout):
            self._log_access(req, 504, self._write_error(
                504, "the application did not answer in time", close=close))
        else:
            log.warning("502 for %s %s: %s", req.method.decode("latin-1"),
                        bytes(req.url[:200]).decode("latin-1"), exc)
            self._log_access(req, 502, self._write_error(
                502, "the worker handling this request was lost", close=close))
        return self._finish_unread(req, forward)

    def _internal_error(self, req: _Request) -> None:
        """A bug of ours while answering ``req``: log it, answer 500 and close."""
        log.exception("internal error answering %s", req.method.decode("latin-1"))
        if self.exchange is not None:
            self.exchange.cancel()
            self.exchange = None
        if self.answer is not None and self.answer.forward is not None:
            self.answer.forward.cancel()
        self.answer = None
        if not self.response_started:
            self._write_error(500, close=True)
        self._close()

    def _end(self, a: _Answer, keep: bool) -> None:
        if self.answer is a:
            self.answer = None
            self.exchange = None
        self._done(a.req, keep)

    def _done(self, req: _Request, keep: bool) -> None:
        """``req`` is answered: keep the connection for the next one, or close it."""
        self.response_started = False
        if self.closing:
            return
        self.requests += 1
        if self.queue and self.queue[0] is req:
            self.queue.popleft()
        if not keep or not req.complete or self.server.draining or (self.eof and not self.queue):
            self._close()
            return
        self._resume_reading()
        if self.queue:
            if not self.queue[0].complete:
                # A pipelined request whose body is still coming is now the one the body
                # timeout watches (on_headers_complete armed it only for the first).
                self._arm(self.limits.body_timeout, self.body_cb)
            self._start_next()
        elif self.parsing is not None:
            self._arm(self.limits.header_timeout, self.header_cb)
        else:
            self._arm(self.limits.keepalive_timeout, self.idle_cb)

    def _send(self, parts: list[bytes | memoryview]) -> None:
        """Send now what the socket takes; hand an owned copy of the rest to the transport.

        The bytes go out with ``writev`` straight from shared memory whenever the transport
        has nothing queued; only a tail the socket did not take is copied into the
        transport's buffer.  So no reference into the arena outlives this call, and the
        caller may release the chunk at once (the transport would otherwise keep a view of
        bytes the worker may overwrite).  A socket error aborts the connection.
        """
        transport = self.transport
        if transport is None or self.closing:
            return
        sent = 0
        if self.fd >= 0 and transport.get_write_buffer_size() == 0:
            try:
                sent = writev(self.fd, parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._abort()
                return
        rest: list[bytes] = []
        for part in parts:
            size = len(part) if isinstance(part, bytes) else part.nbytes
            if sent >= size:
                sent -= size
                continue
            rest.append(bytes(part[sent:]))
            sent = 0
        if rest:
            transport.writelines(rest)

    async def _forward_body(
        self, req: _Request, send: Callable[..., object]
    ) -> None:
        """Stream the request body to the worker as it arrives from the client.

        Stops quietly if the exchange ends first (cancelled, timed out, worker lost): the
        answer reports that; an exception left in this task would only be logged as never
        retrieved.
        """
        try:
            while True:
                while req.body:
                    piece = req.body.popleft()
                    req.body_bytes -= len(piece)
                    last = req.complete and not req.body
                    await send(piece, end=last)  # type: ignore[misc]
                    if last:
                        return
                    self._resume_reading()
                if req.complete:
                    await send(b"", end=True)  # type: ignore[misc]
                    return
                if self.closing:
                    return
                req.waiter = self.loop.create_future()
                try:
                    await req.waiter
                finally:
                    req.waiter = None
        except ZeusError:
            return

    def _finish_unread(self, req: _Request, forward: asyncio.Task[None] | None) -> bool:
        if forward is not None:
            forward.cancel()
        return req.complete and not self.closing

    # ------------------------------------------------------------- helpers

    def _access(self, req: _Request, status: int, sent: int, started: float,
                headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Count an answered request in the metrics and, when on, the access log."""
        self.metrics.observe(req.method, status, sent, started)
        if self.access_log is not None:  # off: this test is all it costs
            self._log_access(req, status, sent, headers)

    def _log_access(self, req: _Request, status: int, sent: int,
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """The access log line of ``req`` (front/accesslog.py), if the access log is on."""
        access = self.access_log
        if access is not None:
            access.log(req, self.client[0] if self.client else "-", status, sent, headers)

    def _write_error(self, status: int, detail: str = "", *, close: bool = True) -> int:
        """Answer an error made by the front; return its body's size (0 if not sent)."""
        if self.transport is None or self.closing:
            return 0
        raw = self.server.error_response(status, detail, close=close)
        self.transport.write(raw)
        return len(raw) - raw.index(b"\r\n\r\n") - 4

    def _reject(self, status: int, detail: str) -> None:
        """Answer a request the front refuses and close the connection."""
        self.rejected = None
        if self.closing:
            return
        if self.answer is None and (self.task is None or self.task.done()):
            self._write_error(status, detail, close=True)
            self._close()
        elif not self.queue[0].complete:
            # The request being answered is the broken one (its body): give it up.
            self._abandon_current(status, detail)
        else:
            # A later pipelined request is broken: answer the complete ones before it, then
            # close (as after a half-close: nothing more will be read on this connection).
            while len(self.queue) > 1 and not self.queue[-1].complete:
                self.queue.pop()
            self.parsing = None
            self.eof = True
            self._pause_reading()

    def _abandon_current(self, status: int = 400, detail: str = "") -> None:
        """Cancel the request being answered (its body cannot complete) and close."""
        if self.exchange is not None:
            self.exchange.cancel()
            self.exchange = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.answer is not None:
            if self.answer.forward is not None:
                self.answer.forward.cancel()
            self.answer = None
        if not self.response_started:
            self._write_error(status, detail or "request body incomplete", close=True)
        self._close()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    def _close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self._disarm()
            self.transport.close()

    def _abort(self) -> None:
        if self.exchange is not None:  # the client is gone: so is its request
            self.exchange.cancel()
            self.exchange = None
        if self.transport is not None:
            self.closing = True
            self._disarm()
            self.transport.abort()

    def close_if_idle(self) -> bool:
        """Graceful shutdown: if no request is in progress, half-close the connection (FIN)
        and discard what the client still sends until it closes its end; True if closing.

        Closing outright would reset the connection if the client's next request is already
        on its way (unread data makes the kernel send RST), and the client would not know
        whether it was seen; after a FIN it reads a clean end before any response, and may
        retry on a new connection (RFC 9112 §9.6 and §9.3.1)."""
        if self.closing:
            return True
        if self.queue or self.parsing is not None:
            return False
        if not self.drain_seen:
            # Idle at the first look: one more poll (the drain's 50 ms) lets a request on its
            # way arrive and be answered (with Connection: close) instead of being turned away.
            self.drain_seen = True
            return False
        transport = self.transport
        if transport is None or not transport.can_write_eof():
            self._close()
            return True
        self._resume_reading()  # keep reading (and discarding) until the client's FIN
        self.closing = True  # data_received now discards; eof_received closes
        self._disarm()
        transport.write_eof()
        return True

    # -------------------------------------------------------------- timers

    # One lazy timer per connection: arming and disarming (several times per request) only
    # store a deadline and a callback; the loop timer is moved only when a deadline comes
    # earlier than it.  When it fires early (the deadline moved later meanwhile) it re-arms
    # itself for the current deadline, about once per keep-alive period on a busy connection
    # instead of a call_later and a cancel per phase of every request.

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if delay <= 0:
            self._disarm()
            return
        deadline = self.loop.time() + delay
        self.deadline = deadline
        self.on_deadline = callback
        timer = self.timer
        if timer is None or self.timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)
            self.timer_at = deadline

    def _disarm(self) -> None:
        self.on_deadline = None
        if self.closing and self.timer is not None:  # closed: let nothing hold us
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        callback = self.on_deadline
        if callback is None or self.closing:
            return
        if self.loop.time() < self.deadline:  # moved later since the timer was set
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            self.timer_at = self.deadline
            return
        self.on_deadline = None
        callback()

    def _idle_timeout(self) -> None:
        self.timer = None
        if not self.queue and self.parsing is None:
            self._close()

    def _header_timeout(self) -> None:
        self.timer = None
        if self.queue:
            return
        self._write_error(408, "request head not received in time")
        self._close()

    def _body_timeout(self) -> None:
        self.timer = None
        if self.queue and not self.queue[0].complete:
            self._abandon_current(408, "request body not received in time")


def _parser_detail(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 120 else text[:120]
