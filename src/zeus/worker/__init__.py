"""The worker side: ``Worker.connect()`` and ``worker.serve(handler)``.

Theory of operation
-------------------
A worker is any process whose runner handed it a channel region (``Region.from_environment``).
``serve`` loops: wait for a message (spin, then FUTEX_WAIT with the GIL released), read the
request head in place, call the handler, write the response into the worker's arena, publish,
and wake the front only if it sleeps.  The front gives a plain worker one request at a time.

A ``Request`` exposes the head (method, path, query, headers) and the body: ``request.body`` is a
zero-copy memoryview into the arena when the body arrived as one message (the common case for
small bodies), and ``request.stream`` reads a body of any size chunk by chunk, releasing each
chunk's arena space as soon as it is consumed.  The handler answers with a ``Response`` whose
body may be bytes, a memoryview or an iterable of either (streamed, with back-pressure when the
front's client is slow), or writes straight into the arena through ``request.respond()``.

The hello-world path is kept short: the head is decoded in C and its ``RequestHead`` record is
built only if the handler asks for ``request.head``; ``Response`` headers are checked in one
native call; and a whole response whose body fits one chunk is published in one native call
(``Channel.send_response_nowait``: the head encoded straight into the arena, Content-Length
appended when missing, head and body made visible by one release store, the front woken at
most once).  When the ring or the arena has no room for both, the general path sends them one
by one and waits, as for any other response.

A handler exception answers that request with a 500 (the traceback goes to stderr, never to the
client) and the worker keeps serving.  A heartbeat thread bumps a counter in the control block
once a second; the front sends CANCEL when the client leaves, which the worker notices while it
reads the body or writes the response (``ClientDisconnected``).

Signals: TERM stops after the request in progress (immediately when idle); INT stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Final

from zeus.channel import (
    Channel,
    Message,
    RequestFields,
    decode_request_fields,
    encode_response_head,
    request_head,
    response_headers,
)
from zeus.core.codec import Headers, RequestHead
from zeus.core.layout import Flag, Kind
from zeus.core.spin import SpinPolicy
from zeus.errors import PeerBrokenError, PeerLostError, RegionMismatchError, ZeusError
from zeus.exitcodes import WorkerExit
from zeus.region import Region

log = logging.getLogger("zeus.worker")

HEARTBEAT_INTERVAL: Final = 1.0
ENV_SPIN_NS: Final = "ZEUS_SPIN_NS"
# Large bodies go out in pieces of this size, so the front writes one piece to the client
# while the worker copies the next into the arena (1 MiB responses: ~+13% req/s here).
RESPONSE_CHUNK: Final = 256 * 1024
# Plain ints on the hot path: ``int & Flag`` or ``Flag & int`` builds an enum member.
_END: Final = int(Flag.END)
_HEAD: Final = int(Kind.RESPONSE_HEAD)
_BODY: Final = int(Kind.RESPONSE_BODY)
_CANCEL: Final = int(Kind.CANCEL)
_REQUEST_HEAD: Final = int(Kind.REQUEST_HEAD)
_REQUEST_BODY: Final = int(Kind.REQUEST_BODY)
# A tuple, not ``bytes | bytearray | memoryview``: that builds a union object at every call.
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)


class ClientDisconnected(ZeusError):
    """The front cancelled this request: its client went away or it timed out."""


class _Stop(BaseException):
    """Raised from the TERM handler to leave an idle wait at once."""


class Response:
    """What a handler returns: a status, headers, and a body.

    ``body`` may be bytes, a memoryview, or an iterable of them (streamed chunk by chunk).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        headers: Iterable[tuple[str | bytes, str | bytes]] | None = None,
        body: bytes | memoryview | Iterable[bytes | memoryview] = b"",
    ) -> None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid status {status}")
        self.status = status
        # Lower-case names; refuse what the front would refuse (ValueError -> a 500, not a
        # protocol violation that gets the worker killed).  One native call.
        self.headers: Headers = response_headers(headers or ())
        self.body = body

    @classmethod
    def _checked(
        cls, status: int, headers: Headers, body: bytes | memoryview | Iterable[bytes | memoryview]
    ) -> Response:
        """A Response from a valid status and headers already through ``response_headers``
        (the WSGI adapter checked them in ``start_response``): no second check."""
        self = cls.__new__(cls)
        self.status = status
        self.headers = headers
        self.body = body
        return self

    def __repr__(self) -> str:
        return f"<Response {self.status} headers={len(self.headers)}>"


class BodyStream:
    """Reads a request body chunk by chunk from the arena; each chunk is released once read."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._buffer = bytearray()

    def chunks(self) -> Iterator[memoryview]:
        """Yield the body's chunks as memoryviews, valid until the next one is asked for."""
        req = self._request
        while True:
            msg = req._next_body()
            if msg is None:
                return
            try:
                if msg.data.nbytes:
                    yield msg.data
            finally:
                msg.release()

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all remaining if ``n < 0``)."""
        buf = self._buffer
        while n < 0 or len(buf) < n:
            msg = self._request._next_body()
            if msg is None:
                break
            with msg:
                buf += msg.data
        if n < 0 or n >= len(buf):
            out = bytes(buf)
            buf.clear()
        else:
            out = bytes(buf[:n])
            del buf[:n]
        return out

    def readline(self, limit: int = -1) -> bytes:
        """Read one line (up to and including b'\\n'), at most ``limit`` bytes."""
        buf = self._buffer
        while True:
            i = buf.find(b"\n")
            if i >= 0 and (limit < 0 or i < limit):
                return self.read(i + 1)
            if 0 <= limit <= len(buf):
                return self.read(limit)
            msg = self._request._next_body()
            if msg is None:
                return self.read()
            with msg:
                buf += msg.data

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class Request:
    """One request being served: its head, its body, and the way to answer it."""

    def __init__(
        self, worker: Worker, msg_id: int, fields: RequestFields, body_done: bool
    ) -> None:
        self._worker = worker
        self._fields = fields  # the decoded head; ``head`` builds its record on demand
        self.id: Final = msg_id
        self.method: Final = fields[0].decode("latin-1")
        path, _, query = fields[1].partition(b"?")
        self.path: Final = path.decode("latin-1")
        self.query: Final = query.decode("latin-1")
        self.headers: Final = fields[2]
        self._body_done = body_done
        self._first: Message | None = None
        self._body_view: memoryview | bytes | None = b"" if body_done else None
        self.cancelled = False
        self.responded = False
        self.ended = False  # the last message of the response has been sent
        self.writer: ResponseWriter | None = None
        self._head: RequestHead | None = None
        self._stream: BodyStream | None = None

    @property
    def head(self) -> RequestHead:
        """The request head as the front sent it (built on first use: most handlers need
        only ``method``, ``path``, ``query`` and ``headers``)."""
        head = self._head
        if head is None:
            head = self._head = request_head(self._fields)
        return head

    @property
    def stream(self) -> BodyStream:
        """The body, read chunk by chunk (see ``BodyStream``)."""
        stream = self._stream
        if stream is None:
            stream = self._stream = BodyStream(self)
        return stream

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as latin-1."""
        key = name.lower().encode("latin-1")
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return default

    @property
    def body(self) -> memoryview | bytes:
        """The whole body: zero-copy when it arrived as one message, else read and joined."""
        if self._body_view is None:
            first = self._next_body()
            if first is None:
                self._body_view = b""
            elif self._body_done:
                self._first = first  # keep it alive (and its arena space) for the request
                self._body_view = first.data
            else:
                with first:
                    parts = [bytes(first.data)]
                parts.append(self.stream.read())
                self._body_view = b"".join(parts)
        return self._body_view

    def _next_body(self) -> Message | None:
        """The next body message of this request, or None at its end."""
        if self._body_done:
            return None
        msg = self._worker._next_for(self)
        if msg.end:
            self._body_done = True
        return msg

    def respond(self, status: int = 200, headers: Headers | None = None) -> ResponseWriter:
        """Start the response now and write its body piece by piece (or in place)."""
        if self.responded:
            raise RuntimeError("response already started")
        hdrs = response_headers(headers or ())
        self.responded = True
        self._worker._send(self.id, encode_response_head(status, hdrs), _HEAD, 0)
        self.writer = ResponseWriter(self)
        return self.writer

    def _finish(self) -> None:
        """The response is complete: let go of the body.

        The part of the body the handler did not read is not waited for: the front may never
        send it (the client may never send it, and the front stops forwarding a body once the
        response is complete), and a worker waiting for it would serve nobody again.  Pieces
        that do come are released as stale by ``Worker._dispatch`` (request IDs are never
        reused).
        """
        if self._first is not None:
            self._first.release()
            self._first = None
        self._body_done = True

    def __repr__(self) -> str:
        return f"<Request id={self.id} {self.method} {self.path!r}>"


class ResponseWriter:
    """Writes a response body into the arena; ``close()`` ends the response."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._worker = request._worker
        self.closed = False

    def write(self, data: bytes | memoryview) -> None:
        """Send a body chunk (waits while the front's arena part is full)."""
        self._worker._check_cancel(self._request)
        if len(data):
            self._worker._send(self._request.id, data, _BODY, 0)

    def reserve(self, n: int) -> memoryview:
        """Arena space for the next ``n`` bytes of body, to fill in place; then ``commit``."""
        self._reservation = self._worker.channel.reserve(min(n, self._worker.channel.max_chunk))
        return self._reservation.buffer

    def commit(self, length: int | None = None) -> None:
        """Publish the reserved chunk (its first ``length`` bytes)."""
        self._reservation.commit(self._request.id, _BODY, 0, length)

    def close(self) -> None:
        """End the response."""
        if not self.closed:
            self.closed = True
            self._worker._send(self._request.id, b"", _BODY, _END)


Handler = Callable[[Request], Response | None]


class Worker:
    """The worker end of a Zeus channel."""

    def __init__(self, channel: Channel) -> None:
        self.channel: Final = channel
        self._pending: deque[Message] = deque()
        self._current: Request | None = None  # the request being served
        self._stop = False
        self._waiting = False  # blocked for the next request: a TERM may interrupt it at once
        self._hb_stop = threading.Event()
        self.requests_served = 0

    @classmethod
    def connect(cls) -> Worker:
        """Attach to the channel this process's runner prepared.

        Run outside Zeus, print one line and exit with WorkerExit.NOT_UNDER_ZEUS.
        """
        try:
            region = Region.from_environment()
        except RegionMismatchError as exc:
            print(f"zeus worker: {exc}", file=sys.stderr)
            raise SystemExit(WorkerExit.NOT_UNDER_ZEUS) from None
        spin = os.environ.get(ENV_SPIN_NS)  # the supervisor's choice for this machine
        policy = SpinPolicy(max_ns=int(spin)) if spin and spin.isdigit() else None
        return cls(Channel(region, spin=policy, max_chunk=RESPONSE_CHUNK))

    # ----------------------------------------------------------------- plumbing

    def _send(self, msg_id: int, data: bytes | memoryview, kind: int, flags: int) -> None:
        self.channel.send(msg_id, data, kind, flags)
        if flags & _END:  # a plain int: ``int & Flag`` would build an enum member
            cur = self._current
            if cur is not None and cur.id == msg_id:
                cur.ended = True  # nothing more may be sent for it

    def _recv(self) -> Message:
        """The next message to dispatch.  Only this wait may be cut short by a TERM
        (``_Stop``): a signal landing anywhere else -- decoding a head, starting the
        heartbeat thread, closing the channel -- only sets ``_stop``, seen by the loop."""
        if self._pending:
            return self._pending.popleft()
        self._waiting = True
        try:
            if self._stop:  # a TERM just before the flag was set
                raise _Stop
            return self.channel.recv()
        finally:
            self._waiting = False

    def _next_for(self, req: Request) -> Message:
        """The next message for ``req``; messages for other IDs wait their turn."""
        pending = self._pending
        for i, queued in enumerate(pending):
            if queued.id == req.id:
                del pending[i]
                return self._own(req, queued)
        while True:
            msg = self.channel.recv()
            if msg.id == req.id:
                return self._own(req, msg)
            self._stash(msg, req)

    def _stash(self, msg: Message, req: Request) -> None:
        """Keep a message that arrived while serving ``req``, for its turn -- unless it is a
        body piece or CANCEL of a request already answered: that one is released at once, as
        ``_dispatch`` would, since holding it would hold arena space the front may need for
        ``req``'s own body."""
        if msg.kind == _REQUEST_HEAD or msg.id == req.id or any(
            queued.id == msg.id and queued.kind == _REQUEST_HEAD for queued in self._pending
        ):
            self._pending.append(msg)
        else:
            msg.release()

    @staticmethod
    def _own(req: Request, msg: Message) -> Message:
        """Check a message that belongs to ``req``'s body."""
        if msg.kind == _CANCEL:
            msg.release()
            req.cancelled = True
            raise ClientDisconnected(f"request {req.id} cancelled")
        if msg.kind != _REQUEST_BODY:
            msg.release()
            raise PeerBrokenError(f"kind {msg.kind} inside request {req.id}'s body")
        return msg

    def _check_cancel(self, req: Request) -> None:
        """Look (without waiting) for a CANCEL of ``req`` among arrived messages."""
        if req.cancelled:
            raise ClientDisconnected(f"request {req.id} cancelled")
        while True:
            try:
                msg = self.channel.recv_nowait()
            except ZeusError:
                return
            if msg.id == req.id and msg.kind == _CANCEL:
                req.cancelled = True
                raise ClientDisconnected(f"request {req.id} cancelled")
            self._stash(msg, req)

    # --------------------------------------------------------------- the loop

    def serve(self, handler: Handler) -> None:
        """Serve requests with ``handler`` until told to stop or the front goes away.

        Exits the process with a WorkerExit code when the channel is lost or broken.
        """
        self._install_signals()
        hb = threading.Thread(target=self._heartbeat, name="zeus-heartbeat", daemon=True)
        hb.start()
        code = WorkerExit.OK
        try:
            while not self._stop:
                try:
                    msg = self._recv()
                except _Stop:
                    break
                self._dispatch(msg, handler)
        except PeerLostError:
            code = WorkerExit.PEER_LOST if not self._stop else WorkerExit.OK
        except PeerBrokenError as exc:
            log.error("front broke the channel: %s", exc)
            code = WorkerExit.PEER_BROKEN
        finally:
            self._hb_stop.set()
            self.channel.close()
        if code != WorkerExit.OK:
            raise SystemExit(code)

    def _dispatch(self, msg: Message, handler: Handler) -> None:
        kind = msg.kind
        if kind != _REQUEST_HEAD:
            msg.release()  # a body or cancel of a request already finished: stale
            return
        if msg.more:
            # A head larger than one chunk: gather its pieces (same ID, same kind).
            data = bytearray()
            while True:
                with msg:
                    data += msg.data
                    more, end, rid = msg.more, msg.end, msg.id
                if not more:
                    break
                msg = self._next_piece(rid)
            fields = decode_request_fields(data)
        else:
            try:  # (not ``with msg``: two method look-ups by name where one call does)
                fields = decode_request_fields(msg.data)
                end, rid = msg.end, msg.id
            finally:
                msg.release()
        req = Request(self, rid, fields, end)
        self._current = req
        try:
            self._run(req, handler)
        finally:
            self._current = None
            self.requests_served += 1

    def _next_piece(self, msg_id: int) -> Message:
        """The next chunk of a head split with Flag.MORE (nothing else may come between)."""
        msg = self.channel.recv()
        if msg.id != msg_id or msg.kind != _REQUEST_HEAD:
            msg.release()
            raise PeerBrokenError(f"request head {msg_id} interrupted by message {msg.id}")
        return msg

    def _run(self, req: Request, handler: Handler) -> None:
        try:
            resp = handler(req)
            if resp is not None:
                if req.responded:
                    raise RuntimeError("handler both called respond() and returned a Response")
                self._write_response(req, resp)
            elif not req.responded:
                raise RuntimeError("handler returned None without responding")
            elif req.writer is not None and not req.writer.closed:
                req.writer.close()  # the handler streamed a response and forgot to end it
            req._finish()
        except ClientDisconnected:
            # The front gave up on this request; acknowledge so it can forget the ID.
            if not req.ended:
                self._send(req.id, b"", _CANCEL, _END)
            return
        except (PeerLostError, PeerBrokenError):
            raise
        except MemoryError:
            # Under an address-space limit this worker is now unreliable: answer if we can,
            # then leave with a code that tells the supervisor which limit was crossed.
            log.error("out of memory on %s %s; exiting", req.method, req.path)
            if not req.responded:
                with contextlib.suppress(Exception):
                    self._send(req.id, _ERROR_HEAD, _HEAD, 0)
                    self._send(req.id, _ERROR_BODY, _BODY, _END)
            raise SystemExit(WorkerExit.MEMORY_LIMIT) from None
        except Exception:
            log.error("handler failed on %s %s\n%s", req.method, req.path, traceback.format_exc())
            if not req.responded:
                self._send(req.id, _ERROR_HEAD, _HEAD, 0)
                self._send(req.id, _ERROR_BODY, _BODY, _END)
            elif not req.ended:
                # Headers are gone already: abort the stream so the front can close the client.
                self._send(req.id, b"", _CANCEL, _END)
            req.responded = True
            req._finish()

    def _write_response(self, req: Request, resp: Response) -> None:
        req.responded = True
        body = resp.body
        status = resp.status
        headers = resp.headers
        if type(headers) is not list:  # a handler may have replaced the list
            headers = list(headers)
        if isinstance(body, _BYTES_LIKE):
            # Content-Length when the app gave none -- unless the status has no body, or for
            # HEAD with an empty body: the app (e.g. werkzeug) left the body out, so its length
            # is unknown; with a body, the handler computed it like a GET.
            add_length = (
                status >= 200 and status != 204 and status != 304
                and (len(body) > 0 or req.method != "HEAD")
            )
            # The common case in one native call: head encoded into the arena, head and body
            # published together, the front woken at most once.
            if self.channel.send_response_nowait(req.id, status, headers, body, add_length):
                req.ended = True
                return
            # No room right now (or a body over one chunk): encode, then send and wait.
            if add_length and not any(k == b"content-length" for k, _ in headers):
                n = body.nbytes if isinstance(body, memoryview) else len(body)
                headers = [*headers, (b"content-length", b"%d" % n)]
            head = encode_response_head(status, headers)
            if len(body) == 0:
                self._send(req.id, head, _HEAD, _END)
                return
            self._send(req.id, head, _HEAD, 0)
            self._send(req.id, body, _BODY, _END)
            return
        self._send(req.id, encode_response_head(status, headers), _HEAD, 0)
        try:
            for chunk in body:
                self._check_cancel(req)
                if len(chunk):
                    self._send(req.id, chunk, _BODY, 0)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        self._send(req.id, b"", _BODY, _END)

    # ------------------------------------------------------ signals, heartbeat

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True
        if self._waiting:
            raise _Stop

    def _heartbeat(self) -> None:
        while not self._hb_stop.wait(HEARTBEAT_INTERVAL):
            try:
                self.channel.heartbeat()
            except (ValueError, ZeusError):
                return

    def __repr__(self) -> str:
        return f"<Worker pid={os.getpid()} served={self.requests_served}>"


_ERROR_HEADERS: Final[Headers] = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", b"22"),
]
_ERROR_HEAD: Final = encode_response_head(500, _ERROR_HEADERS)
_ERROR_BODY: Final = b"Internal Server Error\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m zeus.worker module:app [--interface auto|native|wsgi|asgi]``."""
    import argparse

    from zeus.app import AppLoadError, Interface, detect, load

    parser = argparse.ArgumentParser(prog="python -m zeus.worker")
    parser.add_argument("app", help="the application, as module:attribute")
    parser.add_argument(
        "--interface", choices=[i.value for i in Interface], default=Interface.AUTO.value
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[worker {os.getpid()}] %(message)s")
    try:
        app = load(args.app)
        interface = Interface(args.interface)
        if interface is Interface.AUTO:
            interface = detect(app)
    except AppLoadError as exc:
        print(f"zeus worker: {exc}", file=sys.stderr)
        raise SystemExit(WorkerExit.BOOT_FAILURE) from None
    except Exception:
        print(f"zeus worker: importing {args.app!r} failed:\n{traceback.format_exc()}",
              file=sys.stderr)
        raise SystemExit(WorkerExit.BOOT_FAILURE) from None
    if interface is Interface.ASGI:
        from zeus.adapters.asgi import serve_asgi

        # Attach (publish OPEN = ready) only after lifespan startup succeeded.
        serve_asgi(Worker.connect, app)
        return
    worker = Worker.connect()
    if interface is Interface.NATIVE:
        worker.serve(app)
    else:
        from zeus.adapters.wsgi import WSGIHandler

        worker.serve(WSGIHandler(app))
