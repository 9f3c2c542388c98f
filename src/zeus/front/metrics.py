"""Prometheus metrics of a running Zeus, and the endpoint that serves them.

Theory of operation
-------------------
Counting is kept apart from exporting.  On the per-request path the front only does plain
integer and float additions on :class:`FrontMetrics`, an object owned by the event loop's
thread (so no lock): one dict increment keyed by (method, status class), one bucket of a fixed
latency histogram found by ``bisect``, two sums.  Nothing else happens per request; the cost is
measured in tests/unit/test_metrics.py and docs/metrics.md.

Everything else is read when Prometheus scrapes, by :class:`ZeusCollector`, a prometheus_client
custom collector whose ``collect()`` turns the front's counters and the pool's
``statistics()`` (busy and idle workers, queue depth and wait, restarts by cause, arena use,
each worker's RSS and CPU read from ``/proc``) into metric families.  A scrape costs a few
``/proc`` reads per worker, whatever the traffic.

:class:`MetricsEndpoint` serves them on a bind of their own (``--metrics-bind``): an asyncio
server in the front's event loop -- no thread -- that never waits for a worker, so it answers
while every worker is busy, hung or stopped.  It speaks just enough HTTP/1.1 for a scraper or
a probe: one request per connection (``connection: close``), GET or HEAD, the metrics path and
the health paths (zeus.front.health); a bad request gets a 4xx, an oversized or slow one is
bounded (``MAX_HEAD`` bytes, ``REQUEST_TIMEOUT`` seconds, ``MAX_CONNECTIONS`` at once).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from bisect import bisect_left
from collections.abc import Iterator
from time import monotonic
from typing import TYPE_CHECKING, Final, cast

import httptools
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from zeus.config import Settings, parse_bind
from zeus.errors import ConfigError
from zeus.front.health import DEFAULT_LIVE_PATH, DEFAULT_READY_PATH, response
from zeus.front.unixsocket import SocketFile, bind_unix
from zeus.pool import PoolStatistics

if TYPE_CHECKING:
    from zeus.front.server import FrontServer

log = logging.getLogger("zeus.front")

#: Upper bounds (seconds) of the request latency histogram's buckets; +Inf is implied.  From
#: half a millisecond (a small response through Zeus takes a fraction of one) to a minute.
#: (``tuple[float, ...]``: mypyc keeps a fixed-length tuple of floats unboxed, and would box
#: all 16 into a new tuple at every ``bisect_left``, ~250 ns a request.)
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0)
#: Methods that get their own label value; any other is counted as "other".
METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})

MAX_HEAD: Final = 16 * 1024  # bytes of request a scraper or probe may send
REQUEST_TIMEOUT: Final = 10.0  # seconds to send it
MAX_CONNECTIONS: Final = 64  # at once; more are refused (closed at once)
LINGER: Final = 2.0  # seconds to drain what a client still sends after its response


def check_settings(settings: Settings) -> None:
    """ConfigError if the metrics settings contradict each other or the binds."""
    if settings.metrics_bind is not None and settings.metrics_bind in settings.bind:
        raise ConfigError(f"metrics_bind {settings.metrics_bind} is also in bind: the metrics "
                          "need an address of their own")
    paths = [settings.metrics_path, settings.health_path or DEFAULT_LIVE_PATH,
             settings.ready_path or DEFAULT_READY_PATH]
    if len(set(paths)) < len(paths):
        raise ConfigError(f"metrics_path, health_path and ready_path must differ (got "
                          f"{', '.join(paths)})")


class FrontMetrics:
    """The counters the front bumps as it answers; turned into metrics at scrape time."""

    __slots__ = ("client_pauses", "errors", "latency_buckets", "latency_sum", "other", "requests",
                 "response_bytes")

    def __init__(self) -> None:
        # method -> answered requests by status class (index status // 100).  Only METHODS
        # get an entry: any other method counts in ``other`` (a client inventing methods must
        # not grow this dict).
        self.requests: dict[bytes, list[int]] = {}
        self.other = [0] * 10
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative
        self.latency_sum = 0.0
        self.response_bytes = 0
        self.errors: dict[int, int] = {}  # status -> responses the front wrote itself
        self.client_pauses = 0  # a client's socket made the front stop writing (slow reader)

    def observe(self, method: bytes, status: int, sent: int, started: float) -> None:
        """Count one answered request: ``sent`` body bytes, started at ``started``
        (``time.monotonic()``).  The hot path: keep it to additions."""
        elapsed = monotonic() - started
        counts = self.requests.get(method)
        if counts is None:
            counts = self._counts(method)
        counts[status // 100] += 1
        self.latency_buckets[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        self.latency_sum += elapsed
        self.response_bytes += sent

    def _counts(self, method: bytes) -> list[int]:
        if method not in METHODS:
            return self.other
        counts = self.requests[method] = [0] * 10
        return counts

    def error(self, status: int) -> None:
        """Count an error response the front wrote itself (no worker answered)."""
        self.errors[status] = self.errors.get(status, 0) + 1


class ZeusCollector(Collector):
    """Reads the front's counters and the pool's statistics when Prometheus scrapes."""

    def __init__(self, server: FrontServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        yield from http_families(server.metrics, len(server.connections))
        yield from pool_families(server.pool.statistics(), server.pool.config.concurrency)
        ready, _ = server.health.readiness()
        yield GaugeMetricFamily("zeus_ready", "1 while the readiness probe answers 200",
                                value=int(ready))
        yield GaugeMetricFamily("zeus_draining", "1 once the server drains (after TERM)",
                                value=int(server.draining or server.lame_duck))


def http_families(m: FrontMetrics, connections: int) -> Iterator[Metric]:
    """The front's request counters as metric families."""
    requests = CounterMetricFamily(
        "zeus_http_requests", "Requests answered by a worker, by method and status class",
        labels=("method", "code"))
    rows = [(method.decode("latin-1"), counts) for method, counts in list(m.requests.items())]
    for method, counts in sorted([*rows, ("other", m.other)]):
        for cls, n in enumerate(counts):
            if n:
                requests.add_metric((method, f"{cls}xx"), n)
    yield requests

    buckets = []
    total = 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), m.latency_buckets, strict=True):
        total += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
    yield HistogramMetricFamily(
        "zeus_http_request_duration_seconds",
        "Time from handing a request to the pool to the end of its response, in seconds",
        buckets=buckets, sum_value=m.latency_sum)
    yield CounterMetricFamily(
        "zeus_http_response_body_bytes", "Response body bytes sent for answered requests",
        value=m.response_bytes)
    errors = CounterMetricFamily(
        "zeus_http_errors",
        "Error responses the front wrote itself, by status (400-431 bad request, 408 slow "
        "client, 502 worker lost, 503 no worker in time, 504 request timeout)",
        labels=("code",))
    for status, n in sorted(m.errors.items()):
        errors.add_metric((str(status),), n)
    yield errors
    yield GaugeMetricFamily("zeus_http_connections", "Open client connections",
                            value=connections)
    yield CounterMetricFamily(
        "zeus_http_client_write_pauses",
        "Times a slow client made the front stop passing a response on (back-pressure)",
        value=m.client_pauses)


def pool_families(st: PoolStatistics, concurrency: int) -> Iterator[Metric]:
    """The pool's statistics as metric families (per-worker ones labelled worker and pid)."""
    yield GaugeMetricFamily("zeus_requests_in_flight",
                            "Requests handed to workers and not yet answered", value=st.in_flight)
    yield GaugeMetricFamily("zeus_requests_queued",
                            "Requests waiting for a worker to free up (queue depth)",
                            value=st.queued)
    yield SummaryMetricFamily(
        "zeus_queue_wait_seconds",
        "Time requests spent waiting in the queue for a worker, in seconds (only requests "
        "that had to wait are counted)",
        count_value=st.queue_waits, sum_value=st.queue_wait_total)
    yield GaugeMetricFamily("zeus_workers_busy",
                            "Ready workers with at least one request in flight", value=st.busy)
    yield GaugeMetricFamily("zeus_workers_idle", "Ready workers with no request in flight",
                            value=st.idle)
    by_state = GaugeMetricFamily("zeus_workers", "Worker processes by state", labels=("state",))
    counts = dict.fromkeys(("starting", "ready", "draining", "stopping"), 0)
    for w in st.workers:
        counts[w.state] = counts.get(w.state, 0) + 1
    for state, n in counts.items():
        by_state.add_metric((state,), n)
    yield by_state
    yield GaugeMetricFamily("zeus_worker_concurrency",
                            "Requests one worker takes at once (its capacity)", value=concurrency)
    restarts = CounterMetricFamily(
        "zeus_worker_restarts", "Worker exits, by reason (each is replaced unless the server "
        "is stopping or scaling down)", labels=("reason",))
    for reason, n in sorted(st.restarts.items()):
        restarts.add_metric((reason,), n)
    yield restarts
    yield CounterMetricFamily(
        "zeus_arena_waits", "Sends to a worker that waited for ring or arena space "
        "(back-pressure)", value=st.space_waits)

    labels = ("worker", "pid")
    rss = GaugeMetricFamily("zeus_worker_resident_memory_bytes",
                            "Resident memory of each worker process, in bytes", labels=labels)
    cpu = CounterMetricFamily("zeus_worker_cpu_seconds",
                              "User and system CPU time of each worker process, in seconds",
                              labels=labels)
    in_flight = GaugeMetricFamily("zeus_worker_requests_in_flight",
                                  "Requests in flight on each worker", labels=labels)
    served = CounterMetricFamily("zeus_worker_requests",
                                 "Requests each worker process has finished", labels=labels)
    arena = GaugeMetricFamily(
        "zeus_worker_arena_used_bytes",
        "Bytes of each worker's request arena not yet released by the worker", labels=labels)
    size = 0
    for w in st.workers:
        values = (str(w.index), str(w.pid))
        if w.rss is not None:
            rss.add_metric(values, w.rss)
        if w.cpu_seconds is not None:
            cpu.add_metric(values, w.cpu_seconds)
        in_flight.add_metric(values, w.in_flight)
        served.add_metric(values, w.requests)
        arena.add_metric(values, w.arena_in_use)
        size = size or w.arena_size
    yield from (rss, cpu, in_flight, served, arena)
    yield GaugeMetricFamily("zeus_worker_arena_size_bytes",
                            "Size of each worker's request arena, in bytes", value=size)


# ------------------------------------------------------------------------------ endpoint


class MetricsEndpoint:
    """The metrics bind: /metrics and the health paths, served from the front's loop."""

    def __init__(self, server: FrontServer) -> None:
        settings = server.config.settings
        self.server = server
        self.spec = settings.metrics_bind
        self.path = settings.metrics_path.encode()
        self.registry = CollectorRegistry()
        self.registry.register(ZeusCollector(server))
        ProcessCollector(namespace="zeus_front", registry=self.registry)
        self.connections: set[_ScrapeProtocol] = set()
        self.scrapes = 0
        self._listener: asyncio.Server | None = None
        self._file: SocketFile | None = None

    async def start(self) -> None:
        """Listen on the metrics bind, if one is set; OSError if it cannot be bound."""
        if self.spec is None:
            return
        sock = self._bind(self.spec)
        try:
            self._listener = await self.server.loop.create_server(
                lambda: _ScrapeProtocol(self), sock=sock, backlog=64)
        except BaseException:
            sock.close()
            self._remove_file()
            raise
        log.info("metrics on %s", self._describe(sock))

    def _bind(self, spec: str) -> socket.socket:
        cfg = self.server.config
        kind, where = parse_bind(spec)
        if kind == "fd":
            sock = socket.socket(fileno=cast(int, where))
        elif kind == "unix":
            path = cast(str, where)
            sock = bind_unix(path, backlog=64, mode=cfg.unix_socket_mode,
                             gid=cfg.unix_socket_gid)
            self._file = SocketFile.of(path)
        else:
            host, port = cast(tuple[str, int], where)
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(64)
            except OSError:
                sock.close()
                raise
        sock.setblocking(False)
        return sock

    @staticmethod
    def _describe(sock: socket.socket) -> str:
        name = sock.getsockname()
        if isinstance(name, tuple):
            host = f"[{name[0]}]" if ":" in name[0] else name[0]
            return f"http://{host}:{name[1]}"
        return f"unix:{name}"

    def close(self) -> None:
        """Stop listening and drop open scrape connections (the front is exiting)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self.connections):
            conn.abort()
        self._remove_file()

    def _remove_file(self) -> None:
        if self._file is not None:
            self._file.remove()
            self._file = None

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics if ``accept`` asks) and its type."""
        encoder, content_type = choose_encoder(accept)
        self.scrapes += 1
        return encoder(self.registry), content_type

    def __repr__(self) -> str:
        return (f"<MetricsEndpoint {self.spec or 'off'} connections={len(self.connections)} "
                f"scrapes={self.scrapes}>")


class _ScrapeProtocol(asyncio.Protocol):
    """One connection to the metrics bind: one request, one response, close."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = bytearray()
        self.accept = ""
        self.received = 0
        self.headers_done = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.endpoint.connections) >= MAX_CONNECTIONS:
            self.done = True
            self.transport.abort()
            return
        self.endpoint.connections.add(self)
        self.timer = self.endpoint.server.loop.call_later(REQUEST_TIMEOUT, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self.endpoint.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.received += len(data)
        if self.received > MAX_HEAD:
            if self.headers_done:
                self._reply(413, b"no request body expected\n")
            else:
                self._reply(431, b"request head too large\n")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply(400, b"protocol upgrades are not supported\n")
        except httptools.HttpParserError:
            self._reply(400, b"malformed request\n")

    # httptools callbacks: they never raise (httptools would wrap the exception)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"accept":
            self.accept = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_message_complete(self) -> None:
        if self.done:
            return
        try:
            self._answer()
        except Exception:
            log.exception("metrics endpoint: internal error")
            self._reply(500, b"internal error\n")

    # ------------------------------------------------------------------ answering

    def _answer(self) -> None:
        endpoint = self.endpoint
        method = self.parser.get_method()
        path = bytes(self.url).partition(b"?")[0]
        probe = endpoint.server.health.probe_on_metrics_bind(path)
        if probe is not None:
            self._write(endpoint.server.health.reply(probe, method, keep_alive=False))
        elif path != endpoint.path:
            self._reply(404, b"not found\n")
        elif method not in (b"GET", b"HEAD"):
            self._reply(405, b"use GET or HEAD\n", extra=b"allow: GET, HEAD\r\n")
        else:
            body, content_type = endpoint.render(self.accept)
            self._write(response(200, body, date=endpoint.server.date_header, keep_alive=False,
                                 head_only=method == b"HEAD", content_type=content_type.encode()))

    def _reply(self, status: int, body: bytes, extra: bytes = b"") -> None:
        self._write(response(status, body, date=self.endpoint.server.date_header,
                             keep_alive=False, extra=extra))

    def _write(self, data: bytes) -> None:
        """Send the response and close.  Our side is shut first and the rest of what the
        client sends is read and dropped for a moment (LINGER seconds): closing with unread
        bytes would reset the connection and could destroy the response before it is read."""
        if self.done:
            return  # answered already (llhttp reports an upgrade after the message)
        self.done = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.endpoint.server.loop.call_later(LINGER, transport.close)

    def eof_received(self) -> bool:
        if not self.done and self.received:
            self._reply(400, b"request incomplete\n")
        return False  # close (after what we wrote is sent)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.done:
            self._reply(408, b"request not received in time\n")

    def abort(self) -> None:
        self.done = True
        if self.transport is not None:
            self.transport.abort()
