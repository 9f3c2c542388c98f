"""Liveness and readiness of a real ``zeus serve``, as a load balancer or Kubernetes sees them:
liveness is answered by the front without a worker; readiness is 200 while a worker is ready
and the server is not draining -- 503 during a TERM drain, while a slow request finishes, and
before any worker is ready.  Off on the application's binds unless asked for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .helpers import ROOT, ZEUS, StartServer, build_request, free_port, marker, wait_until
from .test_metrics import scrape, start_with_metrics, stopped, value

PROBES = ("--health-path", "/healthz", "--ready-path", "/readyz")


def get(port: int, path: str, method: str = "GET") -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", timeout=5)


@pytest.mark.timeout(60)
def test_probes_are_off_on_the_app_bind_unless_asked_for(start_server: StartServer) -> None:
    """By default the application owns every path; the metrics bind always answers probes."""
    server, mport = start_with_metrics(start_server)
    assert get(server.port, "/healthz").status_code == 404  # the app's own 404
    assert get(server.port, "/readyz").text == "not found\n"
    assert get(mport, "/healthz").text == "ok\n"
    ready = get(mport, "/readyz")
    assert (ready.status_code, ready.text) == (200, "ready: 2 of 2 workers ready\n")
    assert ready.headers["cache-control"] == "no-store"


@pytest.mark.timeout(60)
def test_probes_on_the_app_bind_at_the_configured_paths(start_server: StartServer) -> None:
    server, mport = start_with_metrics(start_server, "--health-path", "/-/live",
                                       "--ready-path", "/-/ready")
    assert get(server.port, "/-/live?verbose=1").text == "ok\n"  # the query is ignored
    assert get(server.port, "/-/ready").status_code == 200
    assert get(server.port, "/healthz").status_code == 404  # not a probe: the app's path
    assert get(mport, "/-/live").status_code == 200  # the same paths on the metrics bind
    assert get(mport, "/healthz").status_code == 404
    head = get(server.port, "/-/ready", "HEAD")
    assert head.status_code == 200 and head.content == b""
    assert get(server.port, "/-/live", "POST").status_code == 405
    # A probe on a keep-alive connection does not disturb the requests around it (pipelined).
    with server.conn() as c:
        c.send(build_request("GET", "/say?one") + build_request("GET", "/-/live")
               + build_request("GET", "/say?two"))
        bodies = [c.read_response().body for _ in range(3)]
    assert bodies == [b"one", b"ok\n", b"two"]
    # Probes are not application requests: they are not counted as such.
    assert value(scrape(mport), "zeus_http_requests_total", method="GET", code="2xx") == 2


@pytest.mark.timeout(60)
def test_liveness_is_answered_without_a_worker(start_server: StartServer) -> None:
    """Every worker stopped (SIGSTOP) with a request stuck in one: the front still says it
    lives, on both binds, at once."""
    server, mport = start_with_metrics(start_server, *PROBES)
    with stopped(server.workers()), server.conn() as stuck:
        stuck.send(build_request("GET", "/hello"))
        for port in (server.port, mport):
            resp = get(port, "/healthz")
            assert (resp.status_code, resp.text) == (200, "ok\n")
        assert get(mport, "/readyz").status_code == 200  # they are ready, merely busy
    with server.conn() as c:
        assert c.request("GET", "/hello").status == 200


@pytest.mark.timeout(60)
def test_readiness_is_503_while_draining_on_term(start_server: StartServer) -> None:
    """TERM with a slow request in flight: readiness turns 503 (the endpoint leaves the load
    balancer) while liveness stays 200 and the request finishes; then zeus exits 0."""
    server, mport = start_with_metrics(start_server, *PROBES, "--graceful-timeout", "20")
    assert get(mport, "/readyz").status_code == 200
    with server.conn(timeout=20) as slow:
        slow.send(build_request("GET", "/sleep?4"))
        marker(server, "sleeping")
        server.send_signal(signal.SIGTERM)
        wait_until(lambda: get(mport, "/readyz").status_code == 503, 3, "readiness 503")
        resp = get(mport, "/readyz")
        assert resp.text == "not ready: draining\n"
        assert get(mport, "/healthz").status_code == 200
        got = scrape(mport)
        assert value(got, "zeus_draining") == 1 and value(got, "zeus_ready") == 0
        assert server.proc.poll() is None  # still draining
        answer = slow.read_response()
        assert (answer.status, answer.body) == (200, b"slept")
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_drain_delay_serves_new_connections_while_readiness_fails(
    start_server: StartServer,
) -> None:
    """--drain-delay: after TERM the server keeps accepting and serving while readiness is
    503 (load balancers take it out of rotation first); a second TERM ends the delay and the
    usual drain follows."""
    server, mport = start_with_metrics(start_server, *PROBES, "--drain-delay", "60")
    server.send_signal(signal.SIGTERM)
    wait_until(lambda: get(mport, "/readyz").status_code == 503, 5, "readiness 503")
    assert get(server.port, "/readyz").text == "not ready: draining\n"
    assert value(scrape(mport), "zeus_draining") == 1
    for _ in range(3):  # a new connection each time: the listener is still open
        resp = get(server.port, "/hello")
        assert resp.status_code == 200 and resp.headers["connection"] == "keep-alive"
    assert server.proc.poll() is None
    assert "readiness fails for 60.0s, then the drain" in server.log()
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0  # the second TERM: no wait for the 60 s
    assert time.monotonic() - started < 15


@pytest.mark.timeout(60)
def test_readiness_is_503_until_a_worker_is_ready(tmp_path: Path) -> None:
    """A worker program that never connects: the front lives and says so, but is not
    ready."""
    mport = free_port()
    argv = [str(ZEUS), "run", "--bind", f"127.0.0.1:{free_port()}", "--workers", "1",
            "--metrics-bind", f"127.0.0.1:{mport}", "--",
            sys.executable, "-c", "import time; time.sleep(60)"]
    env = {**os.environ, "ZEUS_ALLOW_ROOT": "1"}
    with open(tmp_path / "zeus.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            try:
                return get(mport, "/healthz").status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, "zeus exited"
                return False

        wait_until(up, 20, "the metrics endpoint")
        resp = get(mport, "/readyz")
        assert (resp.status_code, resp.text) == (503, "not ready: no worker ready (0 of 1)\n")
        assert value(scrape(mport), "zeus_workers", state="starting") == 1
    finally:
        proc.kill()
        proc.wait(10)
