"""The access log: one line per answered request, in a gunicorn-style format or as JSON.

Theory of operation
-------------------
The format is compiled once, when the server starts (:func:`compile_format`): the ``%(atom)s``
keys it uses are found and each gets a small function that computes its value, so a request
pays only for the atoms the format names (the default format, nine atoms, costs a few
microseconds; the measured figure is in docs/logging.md).  A format that names an unknown atom,
or that ``%``-formatting refuses, is a :class:`ConfigError` at startup, never a failure per
request.  ``access_log_format = "json"`` writes one JSON object per line instead, with fixed
field names (:data:`JSON_FIELDS`).

The atoms are gunicorn's (its ``access_log_format``), so a gunicorn format string works as is:

========== ==========================================================================
``h``      client address (``-`` on a unix socket)
``l``      ``-`` (ident, never looked up)
``u``      user name of HTTP Basic authentication, else ``-``
``t``      when the request began, ``[24/Nov/2026:06:31:35 +0000]``
``r``      request line, ``GET /path?q=1 HTTP/1.1``
``m``      method
``U``      path, without the query
``q``      query string, without the ``?``
``H``      protocol, ``HTTP/1.1``
``s``      status
``B``      response body bytes sent
``b``      response body bytes sent, ``-`` for none (common log format)
``f``      Referer, else ``-``
``a``      User-Agent, else ``-``
``T``      duration in whole seconds
``M``      duration in whole milliseconds
``D``      duration in whole microseconds
``L``      duration in seconds, with six decimals
``p``      the front's pid, as ``<1234>``
``{h}i``   request header ``h`` (any case), else ``-``
``{h}o``   response header ``h`` (any case), else ``-``
``{v}e``   environment variable ``v`` of the front, else ``-``
========== ==========================================================================

The duration runs from the first byte of the request head to the last byte of the response
handed to the socket.  Values that come from the client (request line, headers, user name) are
escaped: a quote, a backslash or a control character is written as a Python escape, so a client
cannot forge a line or break a quoted field.

The lines go to the ``zeus.access`` logger at INFO; where that logger writes (stderr, stdout, a
file, or a handler of a ``log_config`` file) is set up by ``zeus.front.logs``.  The records
carry nothing but the line, so a handler's format of ``%(message)s`` prints exactly the line.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

from zeus.errors import ConfigError

#: gunicorn's default, Apache's "combined" log format.
DEFAULT_FORMAT: Final = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
#: The format value that selects JSON lines.
JSON: Final = "json"
#: The keys of a JSON line, in order.
JSON_FIELDS: Final = ("time", "client", "method", "path", "query", "protocol", "status",
                      "bytes", "duration_ms", "referer", "user_agent")

_ATOM = re.compile(r"%\(([^)]*)\)")
_CLEAN = re.compile(r'["\\]')

log = logging.getLogger("zeus.access")

Headers = Sequence[tuple[bytes, bytes]]


class RequestView(Protocol):
    """What the access log reads of a request (``front.http._Request`` has it)."""

    @property
    def method(self) -> bytes: ...
    @property
    def url(self) -> bytes | bytearray: ...
    @property
    def version(self) -> str: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...  # names in lower case
    @property
    def started(self) -> float: ...  # time.monotonic() when its head began


class Entry:
    """One request being logged: what the atom functions read (built once per line)."""

    __slots__ = ("client", "duration", "req", "resp_headers", "sent", "status")

    def __init__(self, req: RequestView, client: str, status: int, sent: int,
                 resp_headers: Headers, duration: float) -> None:
        self.req = req
        self.client = client
        self.status = status
        self.sent = sent
        self.resp_headers = resp_headers
        self.duration = duration

    def raw_header(self, name: bytes) -> str | None:
        """Request header ``name`` (lower case) as sent; None when absent."""
        for key, value in self.req.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def header(self, name: bytes) -> str:
        """Request header ``name`` (lower case), escaped; ``-`` when absent."""
        value = self.raw_header(name)
        return "-" if value is None else clean(value)

    def wall_start(self) -> float:
        """The request's start on the wall clock (it was taken on the monotonic one)."""
        return time.time() - self.duration


def clean(text: str) -> str:
    """``text`` safe for a log line: quotes, backslashes and control characters escaped."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the common case: one C scan
    text = _CLEAN.sub(lambda m: "\\" + m.group(0), text)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _target(e: Entry) -> str:
    return clean(bytes(e.req.url).decode("latin-1"))


def _path(e: Entry) -> str:
    return _target(e).partition("?")[0]


def _query(e: Entry) -> str:
    return _target(e).partition("?")[2]


def _user(e: Entry) -> str:
    auth = e.header(b"authorization")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "basic":
        return "-"
    try:
        user = base64.b64decode(token.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return "-"
    return clean(user.partition(":")[0]) or "-"


class _Clock:
    """``[24/Nov/2026:06:31:35 +0000]``, formatted once per second (strftime is slow)."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, e: Entry) -> str:
        start = e.wall_start()
        second = int(start)
        if second != self.second:
            self.second = second
            self.text = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(second))
        return self.text


_PID = f"<{os.getpid()}>"

Atom = Callable[[Entry], str]

_ATOMS: Final[dict[str, Atom]] = {
    "h": lambda e: e.client,
    "l": lambda e: "-",
    "u": _user,
    "r": lambda e: f"{e.req.method.decode('latin-1')} {_target(e)} HTTP/{e.req.version}",
    "m": lambda e: e.req.method.decode("latin-1"),
    "U": _path,
    "q": _query,
    "H": lambda e: f"HTTP/{e.req.version}",
    "s": lambda e: str(e.status),
    "B": lambda e: str(e.sent),
    "b": lambda e: str(e.sent) if e.sent else "-",
    "f": lambda e: e.header(b"referer"),
    "a": lambda e: e.header(b"user-agent"),
    "T": lambda e: str(int(e.duration)),
    "M": lambda e: str(int(e.duration * 1e3)),
    "D": lambda e: str(int(e.duration * 1e6)),
    "L": lambda e: f"{e.duration:.6f}",
    "p": lambda e: _PID,
}


def _request_header(name: str) -> Atom:
    key = name.lower().encode("latin-1")
    return lambda e: e.header(key)


def _response_header(name: str) -> Atom:
    key = name.lower().encode("latin-1")

    def get(e: Entry) -> str:
        for k, v in e.resp_headers:
            if k.lower() == key:
                return clean(v.decode("latin-1"))
        return "-"

    return get


def _environ(name: str) -> Atom:
    return lambda e: clean(os.environ.get(name, "-"))


def _atom(key: str) -> Atom:
    """The function computing atom ``key``; ConfigError naming it if there is none."""
    if key in _ATOMS:
        return _ATOMS[key]
    if key == "t":
        return _Clock()
    m = re.fullmatch(r"\{([^{}]+)\}([ioe])", key)
    if m:
        name, kind = m.groups()
        if kind == "i":
            return _request_header(name)
        if kind == "o":
            return _response_header(name)
        return _environ(name)
    raise ConfigError(f"unknown access log atom %({key})s (see the list in docs/logging.md)")


class TextFormat:
    """A compiled gunicorn-style format: only the atoms it names are computed.

    ``%(h)s`` becomes ``%s`` and the values are given as a tuple, in order: a little faster
    than a mapping, and the only work per request is one call per atom.
    """

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        keys = _ATOM.findall(fmt)
        made = {key: _atom(key) for key in dict.fromkeys(keys)}
        self.atoms: tuple[Atom, ...] = tuple(made[key] for key in keys)
        self.positional = _ATOM.sub("%", fmt)

    def __call__(self, e: Entry) -> str:
        return self.positional % tuple([atom(e) for atom in self.atoms])

    def __repr__(self) -> str:
        return f"<TextFormat {self.fmt!r}>"


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii  # C: escapes, quotes


class JsonFormat:
    """One JSON object per line, keys :data:`JSON_FIELDS`; absent values are ``null``.

    The line is assembled from a template and C-escaped strings (``json.dumps`` of a dict
    costs three times as much), and the time's text is made once per second.
    """

    _TEMPLATE: Final = "{" + ", ".join(f'"{k}": %s' for k in JSON_FIELDS) + "}"

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ("", "")  # "2026-11-24T06:31:35", "+00:00"

    def _time(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:
            self._second = second
            local = datetime.fromtimestamp(second, UTC).astimezone()
            text = local.isoformat(timespec="seconds")
            self._stamp = (text[:19], text[19:])
        head, zone = self._stamp
        return f'"{head}.{int((wall - second) * 1000):03d}{zone}"'

    def __call__(self, e: Entry) -> str:
        req = e.req
        target = bytes(req.url).decode("latin-1")
        path, sep, query = target.partition("?")
        referer = e.raw_header(b"referer")
        agent = e.raw_header(b"user-agent")
        return self._TEMPLATE % (
            self._time(e.wall_start()),
            "null" if e.client == "-" else _quote(e.client),
            _quote(req.method.decode("latin-1")),
            _quote(path),
            _quote(query) if sep else "null",
            f'"HTTP/{req.version}"',
            e.status,
            e.sent,
            round(e.duration * 1e3, 3),
            "null" if referer is None else _quote(referer),
            "null" if agent is None else _quote(agent),
        )

    def __repr__(self) -> str:
        return "<JsonFormat>"


Formatter = Callable[[Entry], str]


def compile_format(fmt: str) -> Formatter:
    """The formatter of ``fmt`` (``json`` or a gunicorn-style format); ConfigError if bad.

    The format is tried on a sample request, so a stray ``%`` or a conversion that cannot take
    text (``%(s)d``) is refused now rather than on every request.
    """
    if fmt.strip().lower() == JSON:
        return JsonFormat()
    formatter = TextFormat(fmt)
    try:
        formatter(_sample())
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"invalid access log format {fmt!r}: {exc}") from None
    return formatter


def check_format(fmt: str) -> str:
    """The parser of the ``access_log_format`` setting: the format, validated."""
    compile_format(fmt)
    return fmt


class _SampleRequest:
    """A request to try a format on."""

    def __init__(self) -> None:
        self.method = b"GET"
        self.url = bytearray(b"/sample?x=1")
        self.version = "1.1"
        self.headers = [(b"user-agent", b"sample")]
        self.started = 0.0


def _sample() -> Entry:
    return Entry(_SampleRequest(), "127.0.0.1", 200, 2, [(b"content-type", b"text/plain")], 0.001)


class AccessLog:
    """Formats and logs one line per request; built only when the access log is on.

    The line goes to ``writer`` when there is one (zeus.front.logs.BatchWriter: many lines,
    one write), else to ``logger`` as a record.
    """

    __slots__ = ("formatter", "logger", "writer")

    def __init__(self, fmt: str = DEFAULT_FORMAT, logger: logging.Logger = log,
                 writer: Callable[[str], None] | None = None) -> None:
        self.formatter = compile_format(fmt)
        self.logger = logger
        self.writer = writer

    def line(self, req: RequestView, client: str, status: int, sent: int,
             resp_headers: Headers = ()) -> str:
        """The access log line of a request answered now."""
        duration = time.monotonic() - req.started
        return self.formatter(Entry(req, client, status, sent, resp_headers, duration))

    def log(self, req: RequestView, client: str, status: int, sent: int,
            resp_headers: Headers = ()) -> None:
        """Log the request; never raises (a failing handler is logging's to report)."""
        if self.writer is not None:
            self.writer(self.line(req, client, status, sent, resp_headers))
            return
        logger = self.logger
        if logger.isEnabledFor(logging.INFO):
            logger.info(self.line(req, client, status, sent, resp_headers))

    def flush(self) -> None:
        """Write the lines a writer holds (at shutdown)."""
        flush = getattr(self.writer, "flush", None)
        if flush is not None:
            flush()

    def __repr__(self) -> str:
        return f"<AccessLog {self.formatter!r}>"
