"""A handler that answers without reading the request body leaves its worker free.

Once a worker has sent the whole response, the rest of that request's body is of no use to
it: it must not wait for it.  The front may never send it -- the client may never send it,
and the front stops forwarding a body once the response is complete -- and a worker waiting
for it would serve nobody again (found with keep-alive POSTs in test_examples, where the head
and the body came in separate segments).
"""

from __future__ import annotations

import pytest

from .helpers import StartServer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unsent", [10, 1 << 20])
def test_a_body_never_sent_does_not_hold_the_worker(start_server: StartServer,
                                                    unsent: int) -> None:
    """The only worker answers a POST whose body never comes, then answers the next client."""
    server = start_server(workers=1)
    first = server.conn()
    first.send(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % unsent
               + b"x" * (unsent // 2))
    resp = first.read_response()
    assert resp.status == 200 and resp.body == b"Hello from Zeus!\n"
    second = server.conn(timeout=15)
    for _ in range(3):
        second.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = second.read_response()
        assert resp.status == 200 and resp.body == b"Hello from Zeus!\n"
    first.sock.close()
    second.sock.close()


@pytest.mark.timeout(60)
def test_an_answer_before_the_whole_body_announces_the_close(start_server: StartServer) -> None:
    """The worker answers while the body is still coming: the response says Connection:
    close, and the front closes (the rest of the body will never be read)."""
    server = start_server(workers=1)
    with server.conn() as c:
        c.send(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nxxxxx")
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header("connection") == "close"
        assert c.closed_by_server()


@pytest.mark.timeout(60)
def test_keep_alive_announced_is_keep_alive_kept(start_server: StartServer) -> None:
    """Head and body in separate segments, answered without reading the body: whichever of
    the body and the response comes first, a response that says keep-alive leaves the
    connection usable, and one that says close is followed by the close (a client must never
    find a connection announced as kept closed under its next request)."""
    server = start_server(workers=2)
    kept = closed = 0
    c = server.conn()
    try:
        for _ in range(60):
            c.send(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
            c.send(b"ab")
            resp = c.read_response()
            assert resp.status == 200 and resp.body == b"Hello from Zeus!\n"
            if resp.header("connection") == "close":
                closed += 1
                assert c.closed_by_server()
                c.close()
                c = server.conn()
                continue
            kept += 1
            c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            assert c.read_response().status == 200
    finally:
        c.close()
    assert kept + closed == 60
