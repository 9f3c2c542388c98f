"""The message codec: how a request head and a response head are laid out in the arena.

Theory of operation
-------------------
A request crosses the channel as one REQUEST_HEAD message, then zero or more REQUEST_BODY
messages; the last message of the request carries Flag.END (a head with END has no body).  A
response is the same with RESPONSE_HEAD and RESPONSE_BODY.  A CANCEL message (no data) from the
front tells the worker that the client is gone or the request timed out.

Heads are length-prefixed binary, little-endian, no text parsing on either side:

request head::

    u8  version (1)      u8  scheme (0 http, 1 https)   u16 n_headers
    u16 client_port      u16 server_port
    str8 method          str16 target (raw path?query)   str8 http_version ("1.1")
    str8 client_host     str8 server_host
    n_headers x (str16 name, str32 value)                names lower-cased by the front

response head::

    u8 version (1)  u8 reserved  u16 status  u32 n_headers
    n_headers x (str16 name, str32 value)

``strN`` is a uN byte length followed by that many bytes (latin-1 for text, as in WSGI).
The front validates every response head it decodes (a worker may be hostile): lengths inside
the message, status in 100..999, header names tokens, no CR, LF or NUL in values.

This module is the specification.  The per-request path uses the same four functions written in
C (``zeus.channel.encode_request_head`` and friends, over ``zeus._native``): same bytes, same
checks, same error messages, compared against this module by ``tests/unit/test_codec_native.py``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

from zeus.errors import PeerBrokenError

CODEC_VERSION: Final = 1
_REQ_FIXED = struct.Struct("<BBHHH")
_RESP_FIXED = struct.Struct("<BBHI")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True, init=False)
class RequestHead:
    """What the front knows of a request when it hands it to a worker.

    Not frozen, though nothing changes one once made: a frozen dataclass's ``__init__`` costs
    four times as much (``object.__setattr__`` per field), and the front makes one per request.
    The ``__init__`` is written out (the dataclass's generated one would run interpreted where
    this module is compiled: setup.py).
    """

    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes
    scheme: str
    client: tuple[str, int] | None
    server: tuple[str, int] | None

    def __init__(self, method: bytes, target: bytes, headers: Headers | None = None,
                 http_version: bytes = b"1.1", scheme: str = "http",
                 client: tuple[str, int] | None = None,
                 server: tuple[str, int] | None = None) -> None:
        self.method = method
        self.target = target
        self.headers = [] if headers is None else headers
        self.http_version = http_version
        self.scheme = scheme
        self.client = client
        self.server = server

    @property
    def path(self) -> bytes:
        """The target without its query string."""
        return self.target.split(b"?", 1)[0]

    @property
    def query(self) -> bytes:
        """The query string without its '?', or b''."""
        parts = self.target.split(b"?", 1)
        return parts[1] if len(parts) == 2 else b""


@dataclass(slots=True, init=False)
class ResponseHead:
    """Status and headers of a response, as the worker hands them back (not frozen, and its
    ``__init__`` written out: see RequestHead)."""

    status: int
    headers: Headers

    def __init__(self, status: int, headers: Headers | None = None) -> None:
        self.status = status
        self.headers = [] if headers is None else headers


def _put(out: bytearray, prefix: struct.Struct, value: bytes) -> None:
    out += prefix.pack(len(value))
    out += value


def encode_request_head(head: RequestHead) -> bytes:
    """Serialise a request head (the front side)."""
    client_host, client_port = head.client or ("", 0)
    server_host, server_port = head.server or ("", 0)
    out = bytearray(
        _REQ_FIXED.pack(
            CODEC_VERSION,
            1 if head.scheme == "https" else 0,
            len(head.headers),
            client_port,
            server_port,
        )
    )
    _put(out, _U8, head.method)
    _put(out, _U16, head.target)
    _put(out, _U8, head.http_version)
    _put(out, _U8, client_host.encode("latin-1"))
    _put(out, _U8, server_host.encode("latin-1"))
    for name, value in head.headers:
        _put(out, _U16, name)
        _put(out, _U32, value)
    return bytes(out)


class _Reader:
    """Bounds-checked sequential reads from a message; a short message is a broken peer."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def fixed(self, s: struct.Struct) -> tuple[int, ...]:
        end = self.pos + s.size
        if end > len(self.buf):
            raise PeerBrokenError("head truncated")
        values = s.unpack_from(self.buf, self.pos)
        self.pos = end
        return values

    def string(self, prefix: struct.Struct) -> bytes:
        (n,) = self.fixed(prefix)
        end = self.pos + n
        if end > len(self.buf):
            raise PeerBrokenError("head field runs past the message")
        value = bytes(self.buf[self.pos : end])
        self.pos = end
        return value


def decode_request_head(buf: bytes | memoryview) -> RequestHead:
    """Parse a request head (the worker side)."""
    r = _Reader(buf)
    version, scheme, n_headers, client_port, server_port = r.fixed(_REQ_FIXED)
    if version != CODEC_VERSION:
        raise PeerBrokenError(f"request head version {version}")
    method = r.string(_U8)
    target = r.string(_U16)
    http_version = r.string(_U8)
    client_host = r.string(_U8).decode("latin-1")
    server_host = r.string(_U8).decode("latin-1")
    headers = [(r.string(_U16), r.string(_U32)) for _ in range(n_headers)]
    return RequestHead(
        method=method,
        target=target,
        headers=headers,
        http_version=http_version,
        scheme="https" if scheme else "http",
        client=(client_host, client_port) if client_host else None,
        server=(server_host, server_port) if server_host else None,
    )


def encode_response_head(status: int, headers: Headers) -> bytes:
    """Serialise a response head (the worker side)."""
    out = bytearray(_RESP_FIXED.pack(CODEC_VERSION, 0, status, len(headers)))
    for name, value in headers:
        _put(out, _U16, name)
        _put(out, _U32, value)
    return bytes(out)


def decode_response_head(buf: bytes | memoryview) -> ResponseHead:
    """Parse and validate a response head from a worker (which may be hostile)."""
    r = _Reader(buf)
    version, _, status, n_headers = r.fixed(_RESP_FIXED)
    if version != CODEC_VERSION:
        raise PeerBrokenError(f"response head version {version}")
    if not 100 <= status <= 999:
        raise PeerBrokenError(f"response status {status}")
    if n_headers > len(buf) // 6:
        raise PeerBrokenError(f"response claims {n_headers} headers in {len(buf)} bytes")
    headers: Headers = []
    for _ in range(n_headers):
        name = r.string(_U16)
        value = r.string(_U32)
        if not _TOKEN.match(name):
            raise PeerBrokenError(f"invalid response header name {name[:40]!r}")
        name = name.lower()  # the front compares names (framing, hop-by-hop) in lower case
        if _BAD_VALUE.search(value):
            raise PeerBrokenError(f"invalid response header value for {name[:40]!r}")
        headers.append((name, value))
    if r.pos != len(buf):
        raise PeerBrokenError("response head has trailing bytes")
    return ResponseHead(status, headers)
