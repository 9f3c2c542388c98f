"""Clients too slow to send their request: the header and body timeouts cut them off, and
while they hang the front keeps serving everyone else (DESIGN.md §5)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import pytest

from .helpers import FIGURES, Conn, StartServer, build_request, marker


def _cut_off(c: Conn, deadline: float) -> tuple[bytes, float]:
    """Wait for the server to end the connection; what it sent, and when (monotonic)."""
    c.sock.settimeout(deadline)
    got = b""
    try:
        got = c.read_to_eof()
    except ConnectionResetError:
        got = bytes(c.buf)
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {deadline}s; got {bytes(c.buf)!r}")
    return got, time.monotonic()


@pytest.mark.timeout(30)
def test_half_a_request_head_then_silence_gets_408_after_the_header_timeout(
    start_server: StartServer,
) -> None:
    server = start_server("--header-timeout", "1", workers=1)
    with server.conn() as c:
        started = time.monotonic()
        c.send(b"GET /hello HTTP/1.1\r\nHost: e2e\r\nX-Half: ")
        got, ended = _cut_off(c, 5)
    assert 0.9 <= ended - started < 3, ended - started
    assert got == b"" or got.startswith(b"HTTP/1.1 408 "), got
    assert b"Traceback" not in got
    with server.conn() as good:
        assert good.request("GET", "/hello").status == 200


@pytest.mark.timeout(30)
def test_headers_and_half_a_body_then_silence_is_cut_after_the_body_timeout(
    start_server: StartServer,
) -> None:
    server = start_server("--body-timeout", "1", "--timeout", "20", workers=1)
    with server.conn() as c:
        started = time.monotonic()
        c.send(build_request("POST", "/hash", [("Content-Length", "100000")]) + b"x" * 50_000)
        got, ended = _cut_off(c, 5)
    assert 0.9 <= ended - started < 3, ended - started
    assert got == b"" or got.startswith(b"HTTP/1.1 408 "), got
    # The only worker was reading that body: it must be free again (its request cancelled).
    with server.conn() as good:
        assert good.request("GET", "/hello").status == 200
    assert time.monotonic() - started < 4


@pytest.mark.timeout(30)
def test_headers_announcing_a_body_then_silence_is_cut_after_the_body_timeout(
    start_server: StartServer,
) -> None:
    server = start_server("--body-timeout", "1", "--timeout", "20", "--graceful-timeout", "1",
                          workers=1)
    with server.conn() as c:
        started = time.monotonic()
        c.send(build_request("POST", "/hash", [("Content-Length", "100000")]))
        _, ended = _cut_off(c, 2.5)
    assert ended - started < 2.5


@pytest.mark.timeout(30)
def test_client_eof_in_the_middle_of_a_head_closes_the_connection(
    start_server: StartServer,
) -> None:
    server = start_server("--header-timeout", "30", "--graceful-timeout", "1", workers=1)
    with server.conn() as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: e2e\r\nX-Half: ")
        c.sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        _, ended = _cut_off(c, 1.5)
    assert ended - started < 1


@pytest.mark.timeout(30)
def test_client_eof_in_the_middle_of_a_body_cancels_the_request(
    start_server: StartServer,
) -> None:
    server = start_server("--body-timeout", "30", "--timeout", "30", "--graceful-timeout", "1",
                          workers=1)
    with server.conn() as c:
        c.send(build_request("POST", "/hash", [("Content-Length", "1000")]) + b"x" * 10)
        c.sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        _, ended = _cut_off(c, 1.5)
    assert ended - started < 1


@pytest.mark.timeout(60)
def test_fast_client_is_served_while_fifty_slow_clients_hang(start_server: StartServer) -> None:
    server = start_server("--header-timeout", "30")
    slow = []
    try:
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: e2e\r\nX-Slow-%d: " % i)
            slow.append(s)
        latencies = []
        for i in range(30):
            started = time.monotonic()
            with server.conn() as c:
                resp = c.request("GET", f"/say?{i}")
            latencies.append(time.monotonic() - started)
            assert (resp.status, resp.body) == (200, str(i).encode())
        # The slow ones are all still connected and unanswered: nobody gave up on them.
        for s in slow:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in slow:  # reset, not FIN: see the half-close tests above
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
    latencies.sort()
    FIGURES["fast request latency with 50 slow clients (median / max)"] = (
        f"{latencies[len(latencies) // 2] * 1000:.1f} ms / {latencies[-1] * 1000:.1f} ms"
    )
    assert latencies[-1] < 0.5, latencies


@pytest.mark.timeout(30)
def test_requests_go_to_the_idle_worker_while_the_other_is_busy(
    start_server: StartServer,
) -> None:
    server = start_server("--graceful-timeout", "1")
    with server.conn() as busy:
        busy.send(build_request("GET", "/sleep?3"))
        sleeper = marker(server, "sleeping")
        (idle,) = server.workers() - {sleeper}
        for i in range(6):
            started = time.monotonic()
            with server.conn(timeout=1) as c:  # a request stuck behind the sleeper times out
                resp = c.request("GET", f"/pid?{i}")
            assert int(resp.body) == idle
            assert time.monotonic() - started < 0.5
