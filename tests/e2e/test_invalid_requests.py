"""Requests the front refuses itself (RFC 9112 §2-§7, RFC 9110 §15): each gets its status code
at once, a short plain-text body without a traceback, and a closed connection; a good request
on a new connection right after is served normally."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from .helpers import Server, ServerSet, StartServer, build_request, chunked, wait_until

MAX_BODY = 1 << 20  # --max-body-size 1M
LIMIT_LINE = 1000  # --limit-request-line
REFUSE_WITHIN = 2.0  # seconds: refusals are immediate, not the work of a timeout

_WRAPPED = (
    "BUG: _Reject raised inside an httptools callback (on_url/on_header/on_headers_complete) "
    "reaches data_received wrapped in HttpParserCallbackError, so `except _Reject` never "
    "matches and the front answers 400 'User callback error' instead of this status"
)

CASES = [
    pytest.param(b"HELLO THERE\r\n\r\n", (400,), id="garbage-request-line"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", (400,),
                 id="tls-client-hello"),
    pytest.param(b"GET /hello HTTP/1.1\nHost: x\n\n", (400,), id="bare-lf"),
    pytest.param(build_request("GET", "/" + "a" * (LIMIT_LINE + 10)), (414,),
                 id="request-target-over-limit"),
    pytest.param(build_request("GET", "/hello", [(f"X-H{i}", "v") for i in range(101)]), (431,),
                 id="too-many-headers"),
    pytest.param(build_request("GET", "/hello", [("X-Big", "v" * 9000)]), (431,),
                 id="header-too-large"),
    pytest.param(build_request("POST", "/echo", [("Content-Length", str(MAX_BODY + 1))]), (413,),
                 id="content-length-over-max-body"),
    pytest.param(build_request("POST", "/echo", [("Content-Length", "5"),
                                                 ("Transfer-Encoding", "chunked")])
                 + b"0\r\n\r\n", (400,), id="content-length-with-transfer-encoding"),
    pytest.param(build_request("POST", "/echo", [("Transfer-Encoding", "chunked"),
                                                 ("Content-Length", "5")])
                 + b"0\r\n\r\n", (400,), id="transfer-encoding-with-content-length"),
    pytest.param(build_request("POST", "/echo", [("Content-Length", "5"),
                                                 ("Content-Length", "6")]) + b"hello!",
                 (400,), id="two-different-content-lengths"),
    pytest.param(build_request("POST", "/echo", [("Content-Length", "5, 6")]) + b"hello!",
                 (400,), id="content-length-list"),
    pytest.param(build_request("POST", "/echo", [("Content-Length", "-5")]), (400,),
                 id="negative-content-length"),
    pytest.param(build_request("GET", "/hello", version="HTTP/2.0"), (400, 505),
                 id="http-2.0-version"),
    pytest.param(build_request("GET", "/hello", version="HTTP/1.2"), (400, 505),
                 id="http-1.2-version"),
    pytest.param(build_request("GET", "/hello", version="HTTX/1.1"), (400, 505),
                 id="not-http"),
    pytest.param(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", (400,),
                 id="nul-in-header-value"),
    pytest.param(b"GET /hello HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n", (400,),
                 id="nul-in-header-name"),
    pytest.param(b"GET /hello HTTP/1.1\r\nHost : x\r\n\r\n", (400,),
                 id="space-before-colon"),
    pytest.param(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n", (400,),
                 id="obsolete-line-folding"),
    pytest.param(build_request("POST", "/echo", [("Transfer-Encoding", "chunked, gzip")])
                 + b"0\r\n\r\n", (400,), id="chunked-not-final-coding"),
]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    servers = ServerSet(tmp_path_factory.mktemp("zeus-limits"))
    try:
        yield servers.start("--max-body-size", "1M", "--limit-request-line", str(LIMIT_LINE),
                            "--timeout", "5", "--body-timeout", "5")
    finally:
        servers.close()


def _assert_refused(server: Server, raw: bytes, expected: tuple[int, ...]) -> None:
    started = time.monotonic()
    with server.conn(timeout=REFUSE_WITHIN) as c:  # a refusal that waits for a timeout fails
        c.send(raw)
        resp = c.read_response()
        assert resp.status in expected, (resp.status, resp.body)
        assert resp.header("connection") == "close"
        assert resp.header("content-type") == "text/plain; charset=utf-8"
        assert b"Traceback" not in resp.body and b'File "' not in resp.body
        assert len(resp.body) < 200
        assert c.closed_by_server()
    assert time.monotonic() - started < REFUSE_WITHIN, "refused, but only after a timeout"
    with server.conn() as good:
        assert good.request("GET", "/hello").status == 200


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_malformed_request_is_refused_with_its_status(
    limited: Server, raw: bytes, expected: tuple[int, ...]
) -> None:
    _assert_refused(limited, raw, expected)


@pytest.mark.timeout(30)
def test_request_target_at_the_limit_is_served(limited: Server) -> None:
    target = "/say?" + "a" * (LIMIT_LINE - 5)
    with limited.conn() as c:
        resp = c.request("GET", target)
    assert resp.status == 200 and len(resp.body) == LIMIT_LINE - 5


_STUCK = (
    "the head was already handed to a worker when the error is found; _reject() then waits "
    "for that response, which waits for a body that never comes: 504 after --timeout, and "
    "the worker is killed"
)


@pytest.mark.timeout(30)
def test_transfer_encoding_without_chunked_is_refused_at_once(start_server: StartServer) -> None:
    # RFC 9112 §6.3: chunked not the final coding of a request -> 400 and close.
    server = start_server("--timeout", "5", workers=1)
    _assert_refused(server, build_request("POST", "/echo", [("Transfer-Encoding", "gzip")])
                    + b"abc", (400,))


@pytest.mark.timeout(30)
def test_malformed_chunk_size_is_refused_at_once(start_server: StartServer) -> None:
    server = start_server("--timeout", "5", workers=1)
    raw = build_request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + b"zz\r\nab\r\n"
    _assert_refused(server, raw, (400,))


@pytest.mark.timeout(30)
def test_chunked_body_over_max_body_is_refused_with_413(start_server: StartServer) -> None:
    server = start_server("--timeout", "5", "--max-body-size", "1M", workers=1)
    started = time.monotonic()
    with server.conn(timeout=REFUSE_WITHIN) as c:
        c.send(build_request("POST", "/hash", [("Transfer-Encoding", "chunked")]))
        # Refused before the whole body is sent is fine: the answer is what counts.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.send(chunked([b"x" * 65536] * 64))  # 4 MiB
        resp = c.read_response()
    assert resp.status == 413, (resp.status, resp.body)
    assert time.monotonic() - started < REFUSE_WITHIN


@pytest.mark.timeout(30)
def test_paced_chunked_body_over_max_body_is_refused(start_server: StartServer) -> None:
    server = start_server("--timeout", "10", "--max-body-size", "1M", workers=1)
    (worker,) = server.workers()
    received = server.state_dir / f"received-{worker}"
    piece = b"z" * (256 << 10)
    with server.conn(timeout=5) as c:
        c.send(build_request("POST", "/hash?progress", [("Transfer-Encoding", "chunked")]))
        sent = 0
        try:
            for _ in range(8):  # 2 MiB, each 256 KiB sent once the app has read the previous
                c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                wait_until(lambda n=sent: received.exists() and int(received.read_text()) >= n,
                           5, f"the app to read {sent} bytes")
            c.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # refused midway, as it should be: look at the answer
        resp = c.read_response()
    assert resp.status == 413, (resp.status, resp.body)


@pytest.mark.timeout(30)
def test_body_at_the_max_body_size_is_accepted(limited: Server) -> None:
    body = b"y" * MAX_BODY
    with limited.conn() as c:
        resp = c.request("POST", "/echo", body=body)
    assert resp.status == 200 and resp.body == body


@pytest.mark.timeout(30)
def test_refusal_ends_a_keep_alive_connection_after_the_good_responses(
    start_server: StartServer,
) -> None:
    server = start_server(workers=1)
    with server.conn() as c:
        c.send(build_request("GET", "/say?good") + b"GARBAGE\r\n\r\n")
        assert c.read_response().body == b"good"
        # Refused while a response was in progress: that response completes, then the
        # connection ends (with a 400 first, or without one; both are allowed).
        rest = c.read_to_eof()
        assert rest == b"" or rest.startswith(b"HTTP/1.1 400 "), rest
