"""Malformed and malicious requests (``bad_http_corpus.py``) sent as raw bytes to a real
``zeus serve``: each gets the right 4xx at once (or, where the corpus allows it, a closed
connection), never a 500, a traceback or a hang; a refusal closes the connection; the good
responses pipelined before the garbage are delivered whole; and a good request on a new
connection right after is served."""

from __future__ import annotations

import contextlib
import time
from typing import Final

import pytest

from .bad_http_corpus import CORPUS, EOF, GOOD_GET, PIPELINED, Bad
from .helpers import FIGURES, Conn, RawResponse, Server, StartServer

ANSWER_WITHIN: Final = 2.0  # seconds: a refusal is immediate, not the work of a timeout


def _send(conn: Conn, raw: bytes) -> None:
    # The front may refuse (and close) before it has read everything: not an error here.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.send(raw)


def _answer(conn: Conn) -> RawResponse | None:
    """The next response, or None if the server closed the connection instead."""
    try:
        return conn.read_response()
    except (EOFError, ConnectionResetError):
        return None


def _good_request_works(server: Server) -> None:
    with server.conn() as good:
        resp = good.request("GET", "/say?after")
        assert (resp.status, resp.body) == (200, b"after")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", CORPUS, ids=[b.name for b in CORPUS])
def test_bad_request_gets_its_status(server: Server, bad: Bad) -> None:
    started = time.monotonic()
    with server.conn(timeout=ANSWER_WITHIN + 1) as c:
        _send(c, bad.raw)
        resp = _answer(c)
        elapsed = time.monotonic() - started
        if resp is None:
            assert EOF in bad.expect, f"closed without an answer ({bad.why})"
        else:
            assert resp.status in bad.expect, (resp.status, resp.body, bad.why)
            assert resp.status != 500
            assert b"Traceback" not in resp.body and b'File "' not in resp.body
            if resp.status >= 400:
                assert resp.header("connection") == "close", resp.raw_head
                with contextlib.suppress(ConnectionResetError):
                    assert c.closed_by_server(), "a refusal must close the connection"
    assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.1f}s: a timeout, not a refusal"
    _good_request_works(server)
    assert server.proc.poll() is None


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "raw", "good"), PIPELINED, ids=[p[0] for p in PIPELINED])
def test_responses_pipelined_before_garbage_are_delivered(
    server: Server, name: str, raw: bytes, good: int
) -> None:
    with server.conn(timeout=ANSWER_WITHIN + 1) as c:
        _send(c, raw)
        for _ in range(good):
            resp = c.read_response()
            assert resp.status == 200 and resp.body in (b"good", b"hello"), resp
        rest = _answer(c)
        assert rest is None or rest.status == 400, rest
        with contextlib.suppress(ConnectionResetError):
            assert c.closed_by_server()
    _good_request_works(server)


@pytest.mark.timeout(60)
def test_the_whole_corpus_on_one_server_leaves_it_healthy(server: Server) -> None:
    """Every entry again, back to back, each on its own connection: then the front still
    answers at once, and nothing it logged is a traceback."""
    started = time.monotonic()
    statuses: dict[int, int] = {}
    for bad in CORPUS:
        with server.conn(timeout=ANSWER_WITHIN + 1) as c:
            _send(c, bad.raw)
            resp = _answer(c)
            status = EOF if resp is None else resp.status
            statuses[status] = statuses.get(status, 0) + 1
    elapsed = time.monotonic() - started
    _good_request_works(server)
    assert 500 not in statuses
    assert "Traceback" not in server.log(), server.log()[-4000:]
    FIGURES["bad HTTP corpus"] = (
        f"{len(CORPUS)} requests in {elapsed:.2f}s: "
        + ", ".join(f"{'closed' if s == EOF else s} x{n}" for s, n in sorted(statuses.items()))
    )


@pytest.mark.timeout(30)
def test_pipelined_request_with_a_body_that_never_comes_times_out(
    start_server: StartServer,
) -> None:
    """A request pipelined behind another, announcing a body it never sends, gets 408 after
    the body timeout and the connection closes (regression, found by reliability/fuzz_http.py:
    the body timeout was armed only for the first request of a batch, so this one waited for
    the worker's request timeout, a 504 and a killed worker)."""
    server = start_server("--body-timeout", "1", "--timeout", "20", workers=1)
    started = time.monotonic()
    with server.conn(timeout=10) as c:
        c.send(GOOD_GET + b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\nok")
        assert c.read_response().body == b"good"
        resp = c.read_response()
        assert resp.status == 408, (resp.status, resp.body)
        assert c.closed_by_server()
    assert time.monotonic() - started < 5
    assert "Traceback" not in server.log()
