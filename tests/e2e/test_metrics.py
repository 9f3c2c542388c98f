"""The Prometheus endpoint of a real ``zeus serve`` (``--metrics-bind``): scraped with a real
HTTP client and parsed with prometheus_client's own parser, after traffic whose effect is
known -- status classes, busy workers, queue depth, restarts by reason, back-pressure, per-
worker RSS -- and answering while every worker is stopped.  Bad requests to it get a 4xx."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import (
    FIGURES,
    Server,
    StartServer,
    build_request,
    free_port,
    marker,
    wait_until,
)

Families = dict[str, list[tuple[str, dict[str, str], float]]]


def scrape(port: int, path: str = "/metrics") -> Families:
    """GET the metrics and parse them: family name -> [(sample name, labels, value)]."""
    resp = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(resp.text)}


def value(families: Families, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` (0 if absent)."""
    for samples in families.values():
        for sample_name, sample_labels, v in samples:
            if sample_name == name and sample_labels == labels:
                return v
    return 0.0


def per_worker(families: Families, name: str) -> dict[int, float]:
    """pid -> value of a per-worker sample."""
    return {int(lab["pid"]): v for samples in families.values()
            for sample_name, lab, v in samples if sample_name == name}


def start_with_metrics(start_server: StartServer, *args: str,
                       workers: int = 2) -> tuple[Server, int]:
    port = free_port()
    server = start_server("--metrics-bind", f"127.0.0.1:{port}", *args, workers=workers)
    return server, port


@contextmanager
def stopped(pids: set[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` for the duration of the block."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def raw(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send ``data`` to the metrics port and read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.timeout(60)
def test_known_traffic_shows_in_the_counters(start_server: StartServer) -> None:
    """10 x 200 and 3 x 404 give exactly those counts; each worker has RSS and CPU series."""
    server, port = start_with_metrics(start_server)
    with server.conn() as c:
        for _ in range(10):
            assert c.request("GET", "/hello").status == 200
        for _ in range(3):
            assert c.request("GET", "/nowhere").status == 404
    got = scrape(port)
    assert value(got, "zeus_http_requests_total", method="GET", code="2xx") == 10
    assert value(got, "zeus_http_requests_total", method="GET", code="4xx") == 3
    assert value(got, "zeus_http_request_duration_seconds_count") == 13
    assert value(got, "zeus_http_request_duration_seconds_bucket", le="+Inf") == 13
    assert value(got, "zeus_http_request_duration_seconds_sum") > 0
    assert value(got, "zeus_http_response_body_bytes_total") == 10 * 17 + 3 * 10
    assert value(got, "zeus_workers_idle") == 2 and value(got, "zeus_workers_busy") == 0
    assert value(got, "zeus_workers", state="ready") == 2
    assert value(got, "zeus_worker_restarts_total", reason="crash") == 0
    assert value(got, "zeus_ready") == 1
    workers = server.workers()
    rss = per_worker(got, "zeus_worker_resident_memory_bytes")
    assert set(rss) == workers and all(v > 1 << 20 for v in rss.values()), rss
    assert set(per_worker(got, "zeus_worker_cpu_seconds_total")) == workers
    assert sum(per_worker(got, "zeus_worker_requests_total").values()) == 13
    assert value(got, "zeus_front_process_resident_memory_bytes") > 0
    started = time.perf_counter()
    for _ in range(20):
        assert raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
            b"HTTP/1.1 200 ")
    FIGURES["metrics scrape, 2 workers (connect, request, whole answer)"] = (
        f"{(time.perf_counter() - started) / 20 * 1000:.2f} ms")


@pytest.mark.timeout(60)
def test_a_slow_request_makes_one_worker_busy(start_server: StartServer) -> None:
    server, port = start_with_metrics(start_server)
    with server.conn() as c:
        c.send(build_request("GET", "/sleep?3"))
        pid = marker(server, "sleeping")
        got = scrape(port)
        assert value(got, "zeus_workers_busy") == 1
        assert value(got, "zeus_workers_idle") == 1
        assert value(got, "zeus_requests_in_flight") == 1
        assert per_worker(got, "zeus_worker_requests_in_flight")[pid] == 1
        assert c.read_response().status == 200
    got = scrape(port)
    assert value(got, "zeus_workers_busy") == 0 and value(got, "zeus_requests_in_flight") == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prefetch", [None, 0, 4])
def test_requests_queue_when_every_worker_is_busy(
    start_server: StartServer, prefetch: int | None,
) -> None:
    """One worker asleep in a request, more requests than it may hold in its ring (its
    ``--prefetch``, 2 by default): the rest wait in the front's queue, and the time they
    waited is counted once they are served."""
    args = ("--prefetch", str(prefetch)) if prefetch is not None else ()
    server, port = start_with_metrics(start_server, *args, workers=1)
    in_ring = 2 if prefetch is None else prefetch
    slow = server.conn()
    others = [server.conn() for _ in range(5)]
    try:
        slow.send(build_request("GET", "/sleep?2"))
        marker(server, "sleeping")
        for c in others:
            c.send(build_request("GET", "/hello"))
        def waiting() -> float:
            got = scrape(port)
            return value(got, "zeus_requests_in_flight") + value(got, "zeus_requests_queued")

        wait_until(lambda: waiting() == 6, 10, "all six requests to reach the pool")
        got = scrape(port)
        assert value(got, "zeus_workers_busy") == 1 and value(got, "zeus_workers_idle") == 0
        queued = value(got, "zeus_requests_queued")
        assert queued == 5 - in_ring  # beyond what the worker's ring may hold
        assert value(got, "zeus_requests_in_flight") == 1 + in_ring
        assert slow.read_response().status == 200
        assert all(c.read_response().status == 200 for c in others)
    finally:
        for c in [slow, *others]:
            c.close()
    got = scrape(port)
    assert value(got, "zeus_requests_queued") == 0
    assert value(got, "zeus_queue_wait_seconds_count") == queued
    assert (value(got, "zeus_queue_wait_seconds_sum") > 0) is (queued > 0)


@pytest.mark.timeout(60)
def test_a_killed_worker_counts_as_a_crash_restart(start_server: StartServer) -> None:
    server, port = start_with_metrics(start_server)
    victim = next(iter(server.workers()))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: value(scrape(port), "zeus_worker_restarts_total", reason="crash") == 1,
               10, "the crash to be counted")
    server.wait_ready(2)
    got = scrape(port)
    assert victim not in per_worker(got, "zeus_worker_resident_memory_bytes")
    assert value(got, "zeus_worker_restarts_total", reason="timeout") == 0


@pytest.mark.timeout(60)
def test_the_endpoint_answers_while_every_worker_is_stopped(start_server: StartServer) -> None:
    """Nothing on the metrics path waits for a worker: SIGSTOPped workers with a request in
    flight do not delay a scrape."""
    server, port = start_with_metrics(start_server)
    with stopped(server.workers()), server.conn() as c:
        c.send(build_request("GET", "/hello"))
        wait_until(lambda: value(scrape(port), "zeus_requests_in_flight") == 1, 5,
                   "the request in flight")
        started = time.monotonic()
        got = scrape(port)
        assert time.monotonic() - started < 1.0
        assert value(got, "zeus_workers_busy") == 1
    with server.conn() as c:
        assert c.request("GET", "/hello").status == 200


@pytest.mark.timeout(60)
def test_back_pressure_from_a_slow_client_and_from_a_full_arena(
    start_server: StartServer,
) -> None:
    """A client that does not read its download pauses the front; a body sent to a worker
    that does not read it fills the worker's (small) arena and the front waits for space."""
    server, port = start_with_metrics(start_server, "--region-size", "1M", workers=1)
    total = 16 << 20
    with server.conn(timeout=20) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.send(build_request("GET", f"/download?{total}"))
        wait_until(lambda: value(scrape(port), "zeus_http_client_write_pauses_total") >= 1,
                   10, "the front to be paused by the client")
        resp = c.read_response()
        assert resp.status == 200 and len(resp.body) == total

    body = os.urandom(4 << 20)
    (worker,) = server.workers()
    result: list[bytes] = []
    with stopped({worker}), server.conn(timeout=20) as c:
        sender = threading.Thread(
            target=lambda: c.send(build_request("POST", "/hash", body=body)), daemon=True)
        sender.start()
        wait_until(lambda: value(scrape(port), "zeus_arena_waits_total") >= 1, 10,
                   "the front to wait for arena space")
        got = scrape(port)
        assert per_worker(got, "zeus_worker_arena_used_bytes")[worker] > 0
        assert value(got, "zeus_worker_arena_size_bytes") > 0
        os.kill(worker, signal.SIGCONT)
        result.append(c.read_response().body)
        sender.join(10)
    assert result == [f"{hashlib.sha256(body).hexdigest()} {len(body)}".encode()]


@pytest.mark.timeout(60)
def test_bad_requests_to_the_metrics_port_get_a_4xx(start_server: StartServer) -> None:
    _, port = start_with_metrics(start_server)

    def status(answer: bytes) -> int:
        return int(answer.split(b" ", 2)[1])

    assert status(raw(port, b"garbage\r\n\r\n")) == 400
    assert status(raw(port, b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")) == 404
    assert status(raw(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")) == 405
    assert status(raw(port, b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 405
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n"
    assert status(raw(port, huge)) == 431
    assert status(raw(port, b"GET /metrics HTTP/1.1\r\nHost", half_close=True)) == 400
    # An upgrade is ignored (RFC 9110 §7.8 lets a server do so): the request is answered.
    assert status(raw(port, b"GET /healthz HTTP/1.1\r\nUpgrade: h2c\r\n"
                            b"Connection: upgrade\r\n\r\n")) == 200
    assert status(raw(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")) == 400
    # HEAD: the length of what GET would send, no body; still a well-formed answer.
    head = raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert b"content-length: " in head
    # And the endpoint is fine after all that.
    assert value(scrape(port), "zeus_ready") == 1


@pytest.mark.timeout(60)
def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(start_server: StartServer) -> None:
    _, port = start_with_metrics(start_server)
    resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, headers={
        "accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.endswith("# EOF\n") and "zeus_workers_busy" in resp.text


@pytest.mark.timeout(60)
def test_metrics_on_a_unix_socket(start_server: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    server = start_server("--metrics-bind", f"unix:{path}", "--metrics-path", "/m")
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, timeout=5) as client:
        resp = client.get("http://zeus/m")
        assert resp.status_code == 200 and "zeus_workers_idle 2.0" in resp.text
        assert client.get("http://zeus/metrics").status_code == 404
    assert server.stop() == 0
    assert not path.exists()


@pytest.mark.timeout(30)
def test_a_taken_metrics_port_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(["--workers", "1", "--metrics-bind", f"127.0.0.1:{port}"], tmp_path,
                        tmp_path / "zeus.log")
        try:
            assert server.proc.wait(20) == 2
        finally:
            server.stop()
    assert "cannot bind the metrics endpoint" in server.log()
    assert "started worker" not in server.log()  # it stopped before starting any
