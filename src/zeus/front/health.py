"""Liveness and readiness, answered by the front itself: a load balancer or an orchestrator
learns whether to route to this host without a request ever reaching a worker.

Theory of operation
-------------------
*Liveness* says the front's event loop runs: it is answered 200 by the loop itself, so it
stays 200 while every worker is busy, hung, stopped or restarting, and while the server
drains.  Restarting a host because its application is slow would only make things worse;
restarting one whose front no longer answers is right.

*Readiness* says "send me traffic": 200 while at least one worker is ready and the server is
not draining, else 503.  On TERM readiness turns 503 at once (and stays so through
``--drain-delay``, while the front still serves as before, then through the drain), and it
stays answerable on the metrics bind until the process exits -- so Kubernetes removes the
endpoint while the requests in flight finish.  A host whose workers are all busy stays ready:
taking it out would push its load onto the others.

Where: on the metrics bind (``--metrics-bind``) the probes are always answered, at
``--health-path`` / ``--ready-path`` or, unset, at ``/healthz`` and ``/readyz``.  On the
application's binds they are answered only when those options are set (the application owns
every path unless told otherwise).  GET and HEAD; any other method gets 405.  The query string
is ignored.  The responses are never cached (``cache-control: no-store``).
"""

from __future__ import annotations

import enum
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from zeus.front.server import FrontServer

DEFAULT_LIVE_PATH: Final = "/healthz"
DEFAULT_READY_PATH: Final = "/readyz"

_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}


class Probe(enum.Enum):
    """What a health request asks."""

    LIVE = "live"
    READY = "ready"


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...


class Health:
    """The server's liveness and readiness, and their HTTP answers (see the module docstring)."""

    def __init__(self, server: FrontServer) -> None:
        settings = server.config.settings
        self.server = server
        app: dict[bytes, Probe] = {}
        if settings.health_path:
            app[settings.health_path.encode()] = Probe.LIVE
        if settings.ready_path:
            app[settings.ready_path.encode()] = Probe.READY
        self.app_paths: Final = app
        #: Whether the application's binds answer probes (the front checks this first, so a
        #: server without health paths pays one attribute read per request).
        self.on_app_bind: Final = bool(app)
        self.metrics_paths: Final = {
            (settings.health_path or DEFAULT_LIVE_PATH).encode(): Probe.LIVE,
            (settings.ready_path or DEFAULT_READY_PATH).encode(): Probe.READY,
        }

    # ------------------------------------------------------------------ state

    def readiness(self) -> tuple[bool, str]:
        """Whether the server should get traffic, and why (the probe's body)."""
        if self.server.draining or self.server.lame_duck:
            return False, "draining"
        workers = self.server.pool.workers
        ready = sum(1 for w in workers if w.state.value == "ready")
        if not ready:
            return False, f"no worker ready (0 of {len(workers)})"
        return True, f"{ready} of {len(workers)} workers ready"

    # ------------------------------------------------------------------ HTTP

    def answer(self, transport: _Writer | None, method: bytes, target: bytes | bytearray,
               keep_alive: bool) -> bool | None:
        """On an application bind: if ``target`` is a health path, write the answer and
        return whether the connection may carry another request; else None (not ours)."""
        probe = self.app_paths.get(bytes(target).partition(b"?")[0])
        if probe is None:
            return None
        keep = keep_alive and not self.server.draining
        if transport is not None:
            transport.write(self.reply(probe, method, keep_alive=keep))
        return keep

    def probe_on_metrics_bind(self, path: bytes) -> Probe | None:
        """The probe ``path`` names on the metrics bind, if any."""
        return self.metrics_paths.get(path)

    def reply(self, probe: Probe, method: bytes, *, keep_alive: bool) -> bytes:
        """The complete HTTP response to ``probe`` (body omitted for HEAD)."""
        if method not in (b"GET", b"HEAD"):
            status, body, extra = 405, b"use GET or HEAD\n", b"allow: GET, HEAD\r\n"
        elif probe is Probe.LIVE:
            status, body, extra = 200, b"ok\n", b""
        else:
            ok, why = self.readiness()
            status, body, extra = (200 if ok else 503), (("ready: " if ok else "not ready: ")
                                                         + why + "\n").encode(), b""
        return response(status, body, date=self.server.date_header, keep_alive=keep_alive,
                        head_only=method == b"HEAD", extra=extra)


def response(status: int, body: bytes, *, date: bytes, keep_alive: bool, head_only: bool = False,
             content_type: bytes = b"text/plain; charset=utf-8", extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 response the front writes itself (``date`` is a header line)."""
    head = b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
        b"content-type: ", content_type, b"\r\n",
        b"content-length: %d\r\n" % len(body),
        b"cache-control: no-store\r\nserver: zeus\r\n",
        date, extra,
        b"connection: keep-alive\r\n\r\n" if keep_alive else b"connection: close\r\n\r\n",
    ))
    return head if head_only else head + body
