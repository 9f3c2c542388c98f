"""WSGI (PEP 3333) inside a Zeus worker.

Theory of operation
-------------------
``WSGIHandler(app)`` is a ``Worker.serve`` handler: one call per request, in the worker's one
thread (``wsgi.multithread`` False, ``wsgi.multiprocess`` True).

*The request.*  The environ is built from the decoded request head; header names become
``HTTP_*`` keys with duplicates comma-joined (cookies with ``"; "``, RFC 6265 §5.4).  Names that
contain ``_`` are dropped: ``X_Forwarded_For`` and ``X-Forwarded-For`` would both become
``HTTP_X_FORWARDED_FOR``, and a client could forge the one a proxy set (gunicorn does the
same).  ``wsgi.input`` is a ``WSGIInput`` reading the body chunk by chunk from the arena: each
chunk is copied out once, into the bytes the application asked for, and its arena space is
released as soon as it is consumed.  The body is never held whole unless the application reads
it whole.  ``wsgi.input_terminated`` is True: reading to EOF is safe whatever the framing.

*The response.*  ``start_response`` only records status and headers (validated at once: a bad
header value would make the front kill this worker as a protocol violation).  The head is sent
with the first non-empty body chunk or the first ``write()`` call (PEP 3333, "Buffering and
Streaming").  Two shortcuts save messages without changing what the client sees:

* a body known to be complete in its first chunk (a one-element list, or a first chunk that
  reaches the application's Content-Length) goes back as a ``Response``: head, then body with
  END, two messages published at once by the worker;
* a ``FileWrapper`` around a file with ``readinto`` is read straight into reserved arena space
  (``ResponseWriter.reserve``/``commit``): the file's bytes are copied once, by the kernel.

Anything else streams: one message per chunk, then an empty END.  The response stops at the
application's Content-Length, as PEP 3333 asks ("Handling the Content-Length Header").
``close()`` of the application's iterable is always called; if it fails after the response was
complete, the error is logged (the response has already gone and must not be aborted).

*Per request*, the environ starts from a copy of its constant entries, and status lines and
header names seen before are looked up in small bounded caches rather than parsed again;
``start_response`` checks the headers in one native call (``zeus.channel.response_headers``)
and the worker does not check them a second time.

*Errors.*  An exception before the head was sent propagates: the worker answers 500.  After,
it propagates too: the worker sends CANCEL so the front can abort the client's response.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Final, Protocol
from urllib.parse import unquote_to_bytes

from zeus.channel import response_headers
from zeus.core.codec import Headers
from zeus.worker import ClientDisconnected, Request, Response, ResponseWriter

log = logging.getLogger("zeus.wsgi")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Write = Callable[[bytes], None]


class StartResponse(Protocol):
    """PEP 3333's ``start_response`` callable."""

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
    ) -> Write: ...


WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

FILE_BLOCK: Final = 1 << 20  # bytes read straight into the arena per FileWrapper chunk
_STATUS: Final = re.compile(r"([1-9][0-9]{2}) [^\r\n\x00]*\Z")
# Per-request work an application repeats with the same few values: status lines and header
# names seen before are looked up, not parsed again.  Bounded: past the limit, no new entries
# (a client choosing header names cannot grow them without end).
_CACHE_LIMIT: Final = 512
_STATUS_CODES: dict[str, int] = {}
# Request header name -> its environ key; None: a name with "_", left out (module docstring).
_ENV_KEYS: dict[bytes, str | None] = {
    b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH",
}
_PROTOCOLS: dict[bytes, str] = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
_NEWLINE: Final = re.compile(b"\n")
_EMPTY: Final = memoryview(b"")
# Tuples, not ``X | Y`` unions: a union is built anew at every isinstance call.
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)
_SEQUENCES: Final = (list, tuple)


class WSGIInput:
    """``wsgi.input``: the request body, streamed from the arena.

    ``read(n)`` returns exactly ``n`` bytes unless the body ends first.  Each arena chunk is
    released as soon as it has been consumed.
    """

    def __init__(self, request: Request | None) -> None:
        self._request = request  # None: no body at all (_NO_BODY, shared)
        self._chunks: Iterator[memoryview] | None = None  # request.stream.chunks(), on demand
        self._view = _EMPTY  # the current chunk (a view into the arena)
        self._pos = 0  # bytes of it already consumed
        self._eof = request is None

    def _fill(self) -> bool:
        """Make sure the current chunk has unread bytes; False at the end of the body."""
        while self._pos >= len(self._view):
            if self._eof:
                return False
            self._view = _EMPTY
            if self._chunks is None:
                assert self._request is not None  # without one, _eof is set from the start
                self._chunks = self._request.stream.chunks()
            try:
                self._view = next(self._chunks)  # releases the previous chunk
            except StopIteration:
                self._eof = True
                return False
            self._pos = 0
        return True

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current chunk (which must have some)."""
        pos = self._pos
        end = min(pos + n, len(self._view))
        self._pos = end
        return bytes(self._view[pos:end])

    def read(self, size: int | None = -1) -> bytes:
        """Read ``size`` bytes (fewer only at the end of the body); all that is left if < 0."""
        if size is None or size < 0:
            parts = []
            while self._fill():
                parts.append(self._take(len(self._view)))
            return b"".join(parts)
        if size == 0 or not self._fill():
            return b""
        first = self._take(size)
        if len(first) == size:
            return first
        parts = [first]
        got = len(first)
        while got < size and self._fill():
            part = self._take(size - got)
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line, through its b'\\n'; at most ``size`` bytes if ``size >= 0``."""
        limit = -1 if size is None else size
        parts: list[bytes] = []
        got = 0
        while (limit < 0 or got < limit) and self._fill():
            end = len(self._view)
            if limit >= 0:
                end = min(end, self._pos + limit - got)
            m = _NEWLINE.search(self._view, self._pos, end)
            part = self._take((m.end() if m else end) - self._pos)
            parts.append(part)
            got += len(part)
            if m:
                break
        return b"".join(parts)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """Read lines until the body ends or ``hint`` bytes have been read."""
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Release the chunk in hand (the worker drains the rest of the body)."""
        self._view = _EMPTY
        self._pos = 0
        self._eof = True
        close = getattr(self._chunks, "close", None)  # a generator: releases its chunk
        if close is not None:
            close()

    def __repr__(self) -> str:
        return f"<WSGIInput pos={self._pos}/{len(self._view)} eof={self._eof}>"


# The ``wsgi.input`` of every request without a body: at its end from the start, holding no
# request and no chunk, so one can be shared (every read returns b'').
_NO_BODY: Final = WSGIInput(None)


class FileWrapper:
    """``wsgi.file_wrapper``: an iterable over a file-like object's blocks.

    Iterating reads ``blksize`` bytes at a time; the handler recognises it and, when the object
    has ``readinto``, reads the file straight into the arena instead.
    """

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while data := read(self.blksize):
            yield data

    def close(self) -> None:
        """Close the file, if it can be closed (PEP 3333)."""
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()

    def remaining(self) -> int | None:
        """Bytes left in a regular file from its current position, else None."""
        try:
            fd = self.filelike.fileno()
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            return max(0, st.st_size - self.filelike.tell())
        except (AttributeError, OSError, ValueError):
            return None


class _Call:
    """One request's response side: start_response, write(), and the body pump."""

    __slots__ = ("done", "headers", "left", "request", "status", "writer")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.status: int | None = None
        self.headers: Headers = []
        self.left: int | None = None  # bytes still allowed by the app's Content-Length
        self.writer: ResponseWriter | None = None  # set once the head has been sent
        self.done = False  # the response has been handed over whole

    # ---- PEP 3333 callables

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Write:
        if exc_info is not None:
            try:
                if self.writer is not None:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback cycle (PEP 3333)
        elif self.status is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        if not isinstance(status, str):
            raise TypeError(f"status must be a str, not {type(status).__name__}")
        code = _STATUS_CODES.get(status)
        if code is None:
            m = _STATUS.match(status)
            if m is None:
                raise ValueError(f"invalid status line {status!r}")
            code = int(m.group(1))
            if len(_STATUS_CODES) < _CACHE_LIMIT:
                _STATUS_CODES[status] = code
        # str only, names lower-cased, what the front would refuse refused: one native call.
        encoded = response_headers(headers, True)  # str only
        left = None
        for name, value in encoded:
            if name == b"content-length" and (value.isdigit() or value.strip().isdigit()):
                left = int(value)
        self.status = code
        self.headers = encoded
        self.left = left
        return self.write

    def write(self, data: bytes) -> None:
        """The ``write()`` callable: send ``data`` now (the head first if need be)."""
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if self.writer is None:
            self._start()
        self._send(data)

    # ---- driving the response

    def run(self, result: Iterable[bytes]) -> Response | None:
        """Send the body ``result`` yields; a ``Response`` when it fits the fast path."""
        if self.writer is None and isinstance(result, FileWrapper):
            if hasattr(result.filelike, "readinto"):
                self._send_file(result)
                return None
        elif self.writer is None and isinstance(result, _SEQUENCES) and len(result) == 1:
            self._check_chunk(result[0])
            return self._whole(result[0])
        for chunk in result:
            self._check_chunk(chunk)
            if not chunk:
                continue
            if self.writer is None:
                if self.left is not None and len(chunk) >= self.left:
                    return self._whole(chunk)
                self._start()
            if not self._send(chunk):
                break
        if self.writer is None:
            return self._whole(b"")
        self.writer.close()
        self.done = True
        return None

    @staticmethod
    def _check_chunk(chunk: object) -> None:
        if not isinstance(chunk, _BYTES_LIKE):
            raise TypeError(f"the application yielded {type(chunk).__name__}, not bytes")

    def _whole(self, body: bytes | bytearray | memoryview) -> Response:
        """The response, complete: the worker sends it as head + body (END)."""
        if self.status is None:
            raise RuntimeError("the application did not call start_response")
        if self.request.cancelled:
            raise ClientDisconnected(f"request {self.request.id} cancelled")
        if self.left is not None and len(body) > self.left:
            body = body[: self.left]
        self.done = True
        # status and headers were checked by start_response
        return Response._checked(self.status, self.headers, bytes(body) if isinstance(
            body, bytearray) else body)

    def _start(self) -> None:
        if self.status is None:
            raise RuntimeError("the application did not call start_response")
        if self.request.cancelled:
            raise ClientDisconnected(f"request {self.request.id} cancelled")
        self.writer = self.request.respond(self.status, self.headers)

    def _send(self, data: bytes | bytearray | memoryview) -> bool:
        """Write a body chunk within Content-Length; False once Content-Length is reached."""
        assert self.writer is not None
        if self.left is not None:
            if len(data) > self.left:
                data = memoryview(data)[: self.left]
            self.left -= len(data)
        self.writer.write(data if isinstance(data, bytes) else memoryview(data))
        return self.left is None or self.left > 0

    def _send_file(self, wrapper: FileWrapper) -> None:
        """Read a file straight into reserved arena space, block by block."""
        self._start()
        writer = self.writer
        assert writer is not None
        f: Any = wrapper.filelike
        size = wrapper.remaining()
        if self.left is not None:
            size = self.left if size is None else min(size, self.left)
        block = max(wrapper.blksize, FILE_BLOCK)
        while size is None or size > 0:
            writer.write(b"")  # notices a CANCEL from the front (ClientDisconnected)
            buf = writer.reserve(block if size is None else min(block, size))
            try:
                n = f.readinto(buf)
            except BaseException:
                writer.commit(0)  # a zero-length commit takes no space
                raise
            n = n or 0
            writer.commit(n)
            if n == 0:
                break
            if size is not None:
                size -= n
        writer.close()
        self.done = True


class WSGIHandler:
    """Runs a WSGI application as a ``Worker.serve`` handler."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, request: Request) -> Response | None:
        call = _Call(request)
        # No body at all (the head came with END): the shared empty input, nothing to close.
        body = _NO_BODY if request._body_done else WSGIInput(request)
        try:
            result = self.app(environ(request, body), call.start_response)
            try:
                return call.run(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    _close(close, call, request)
        finally:
            if body is not _NO_BODY:
                body.close()

    def __repr__(self) -> str:
        return f"<WSGIHandler {self.app!r}>"


def _close(close: Callable[[], object], call: _Call, request: Request) -> None:
    """Call the iterable's ``close()``; after a complete response, only log its failure."""
    if not call.done:
        close()
        return
    try:
        close()
    except Exception:
        log.error("close() of the response iterable failed on %s %s\n%s", request.method,
                  request.path, traceback.format_exc().rstrip())


# The environ entries every request has, whatever it is: copied, then completed.
_ENV_BASE: Final[dict[str, Any]] = {
    "SCRIPT_NAME": "",
    "wsgi.version": (1, 0),
    "wsgi.input_terminated": True,
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.file_wrapper": FileWrapper,
}


def _env_key(name: bytes) -> str | None:
    """The environ key of request header ``name`` (lower-case bytes); None to leave it out."""
    key = _ENV_KEYS.get(name, "")
    if key == "":
        key = None if b"_" in name else "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_ENV_KEYS) < _CACHE_LIMIT:
            _ENV_KEYS[name] = key
    return key


def environ(request: Request, body: WSGIInput) -> dict[str, Any]:
    """The PEP 3333 environ of ``request``, with ``body`` as ``wsgi.input``."""
    _, target, headers, version, https, chost, cport, shost, sport = request._fields
    path = request.path
    scheme = "https" if https else "http"
    env = _ENV_BASE.copy()
    env["REQUEST_METHOD"] = request.method
    if "%" in path:  # the raw bytes, unquoted, then latin-1 (PEP 3333's "bytes as str")
        path = unquote_to_bytes(target.partition(b"?")[0]).decode("latin-1")
    env["PATH_INFO"] = path
    env["QUERY_STRING"] = request.query
    env["RAW_URI"] = target.decode("latin-1")
    env["SERVER_PROTOCOL"] = _PROTOCOLS.get(version) or "HTTP/" + version.decode("latin-1")
    env["wsgi.url_scheme"] = scheme
    env["wsgi.input"] = body
    env["wsgi.errors"] = sys.stderr
    host: str | None = None
    keys = _ENV_KEYS
    for name, value in headers:
        key = keys.get(name, "")
        if key == "":
            key = _env_key(name)
        if key is None:
            continue  # see the module docstring
        text = value.decode("latin-1")
        if key in env:
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                env[key] = text  # the last one (the front refuses differing lengths)
                continue
            text = env[key] + ("; " if key == "HTTP_COOKIE" else ", ") + text
        elif key == "HTTP_HOST":
            host = text
        env[key] = text
    if shost:
        env["SERVER_NAME"] = shost
        env["SERVER_PORT"] = str(sport)
    else:
        env["SERVER_NAME"], env["SERVER_PORT"] = _split_host(host, scheme)
    if chost:
        env["REMOTE_ADDR"] = chost
        env["REMOTE_PORT"] = str(cport)
    return env


def _split_host(host: str | None, scheme: str) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT from a Host header (RFC 9110 §7.2), IPv6 literals too."""
    default = "443" if scheme == "https" else "80"
    if not host:
        return "localhost", default
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            rest = host[end + 1 :]
            return host[1:end], rest[1:] if rest.startswith(":") and rest[1:] else default
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and name:
        return name, port
    return host, default
