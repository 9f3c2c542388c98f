"""The worker's hello-world fast path, driven in one process.

``Worker._write_response`` publishes a whole small response (head and body) in one native call
(``Channel.send_response_nowait``), headers are checked in C (``response_headers``), and the
WSGI adapter builds its environ from the decoded head fields.  These tests pin what the front
reads -- message kinds, flags, the decoded head -- to what the general path (encode, then one
send per message) produces, and the fallback when the ring or the arena is full.

Both ends live in this process: the front on ``Region.create()``, the worker on a second
mapping of the same memfd; the test plays the front and reads every message the worker sends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from zeus import Channel, Flag, Kind, Region, Request, Response, WouldBlock
from zeus.adapters.wsgi import WSGIHandler
from zeus.channel import (
    WANT_SPACE,
    decode_response_head,
    encode_request_head,
    encode_response_head,
    response_headers,
)
from zeus.core.codec import RequestHead
from zeus.core.spin import SpinPolicy
from zeus.worker import Worker

SIZE = 256 * 1024
SLOTS = 16
Sent = tuple[int, str, int, object]  # id, kind name, flags, decoded head or body bytes


class Harness:
    """A worker serving requests the test sends as the front, one at a time."""

    def __init__(self) -> None:
        self.front_region = Region.create(size=SIZE, slots=SLOTS)
        self.worker_region = Region.attach(os.dup(self.front_region.fd))
        self.front = Channel(self.front_region, peer_pid=os.getpid(),
                             spin=SpinPolicy(max_ns=0))
        self.channel = Channel(self.worker_region, spin=SpinPolicy(max_ns=0))
        self.worker = Worker(self.channel)
        self.next_id = 1

    def serve(self, handler: Callable[[Request], Response | None], method: bytes = b"GET",
              target: bytes = b"/hello", headers: list[tuple[bytes, bytes]] | None = None,
              **head: Any) -> list[Sent]:
        """Send one request head (no body), let the worker serve it, return what it sent."""
        rid = self.next_id
        self.next_id += 1
        if headers is None:
            headers = [(b"host", b"example.com")]
        req = RequestHead(method, target, headers, **head)
        self.front.send_nowait(rid, encode_request_head(req), Kind.REQUEST_HEAD, Flag.END)
        self.worker._dispatch(self.worker._recv(), handler)
        return self.drain()

    def drain(self) -> list[Sent]:
        out: list[Sent] = []
        while (msg := self.front.recv_ready()) is not None:
            with msg:
                data: object = (decode_response_head(msg.data) if msg.kind == Kind.RESPONSE_HEAD
                                else bytes(msg.data))
                out.append((msg.id, Kind(msg.kind).name, msg.flags, data))
        return out

    def close(self) -> None:
        self.channel.close()
        self.front.close()
        self.worker_region.close()
        self.front_region.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def general_path(rid: int, status: int, headers: list[tuple[bytes, bytes]],
                 body: bytes) -> list[Sent]:
    """What the worker sent before the fast path: head (END if no body), then body with END."""
    head = decode_response_head(encode_response_head(status, headers))
    if not body:
        return [(rid, "RESPONSE_HEAD", int(Flag.END), head)]
    return [(rid, "RESPONSE_HEAD", 0, head), (rid, "RESPONSE_BODY", int(Flag.END), body)]


CL = b"content-length"


@pytest.mark.parametrize(
    ("method", "status", "headers", "body", "expected_headers"),
    [
        ("GET", 200, [("Content-Type", "text/plain")], b"Hello world!",
         [(b"content-type", b"text/plain"), (CL, b"12")]),
        ("GET", 200, [("Content-Length", "12")], b"Hello world!", [(CL, b"12")]),
        ("GET", 200, [], b"", [(CL, b"0")]),
        ("HEAD", 200, [], b"", []),  # the app left the body out: its length is unknown
        ("HEAD", 200, [], b"abc", [(CL, b"3")]),
        ("GET", 204, [], b"", []),
        ("GET", 304, [(b"ETag", b'"x"')], b"", [(b"etag", b'"x"')]),
        ("GET", 101, [], b"", []),
        ("GET", 200, [], memoryview(b"view"), [(CL, b"4")]),
        ("GET", 200, [], bytearray(b"array"), [(CL, b"5")]),
    ],
)
def test_a_whole_response_is_what_the_general_path_sent(
    harness: Harness, method: str, status: int, headers: list[tuple[str | bytes, str | bytes]],
    body: bytes, expected_headers: list[tuple[bytes, bytes]],
) -> None:
    """Head then body with END (or one head with END when the body is empty), Content-Length
    added only when the app gave none and the status (and HEAD) allow a body."""
    sent = harness.serve(lambda r: Response(status, headers, body), method=method.encode())
    assert sent == general_path(1, status, expected_headers, bytes(body))


def test_the_head_is_encoded_like_encode_response_head(harness: Harness) -> None:
    """Byte for byte: the arena holds exactly ``encode_response_head``'s layout."""
    headers = response_headers([(b"X-%d" % i, b"v" * i) for i in range(40)])
    ch = harness.channel
    assert ch.send_response_nowait(1, 299, headers, b"body", True)
    ch.send(2, encode_response_head(299, [*headers, (CL, b"4")]), Kind.RESPONSE_HEAD, 0)
    fast_head, fast_body, general_head = (harness.front.recv_ready() for _ in range(3))
    assert fast_head is not None and fast_body is not None and general_head is not None
    assert bytes(fast_head.data) == bytes(general_head.data)
    assert bytes(fast_body.data) == b"body"
    for m in fast_head, fast_body, general_head:
        m.release()


def test_a_full_ring_falls_back_to_the_blocking_path(harness: Harness) -> None:
    """With one free slot, the fast path publishes nothing (never a head without its body),
    while a bodiless response (one message) still fits."""
    ch = harness.channel
    for i in range(SLOTS - 1):
        ch.send_nowait(1000 + i, b"x", Kind.RESPONSE_BODY, 0)
    assert not ch.send_response_nowait(7, 200, [], b"body", True)
    assert ch.send_response_nowait(8, 204, [], b"", False)
    with pytest.raises(WouldBlock):
        ch.send_nowait(9, b"", Kind.RESPONSE_BODY, Flag.END)
    sent = harness.drain()
    assert [m[0] for m in sent] == [1000 + i for i in range(SLOTS - 1)] + [8]
    assert sent[-1] == general_path(8, 204, [], b"")[0]
    assert ch.send_response_nowait(7, 200, [], b"body", True)
    assert harness.drain() == general_path(7, 200, [(CL, b"4")], b"body")


def test_the_worker_waits_for_room_when_the_ring_is_full(harness: Harness) -> None:
    """The worker's fallback: head and body sent one by one, waiting for the front to make
    room (here the front consumes from another thread once the worker is blocked)."""
    ch = harness.channel
    for i in range(SLOTS - 1):
        ch.send_nowait(1000 + i, b"x", Kind.RESPONSE_BODY, 0)
    drained: list[Sent] = []

    def front() -> None:
        # Wait until the worker announced it waits for space, then consume everything.
        deadline = time.monotonic() + 10
        while harness.worker._current is None or not (
            ch._m.load_u32(ch._sleep_word) & WANT_SPACE
        ):
            assert time.monotonic() < deadline, "the worker never waited for room"
        drained.extend(harness.drain())

    t = threading.Thread(target=front)
    t.start()
    try:
        rest = harness.serve(lambda r: Response(200, [], b"body"))
    finally:
        t.join(10)
    sent = drained + rest + harness.drain()
    assert sent[SLOTS - 1 :] == general_path(1, 200, [(CL, b"4")], b"body")


def test_a_full_arena_publishes_nothing_and_keeps_the_allocator_consistent(
    harness: Harness,
) -> None:
    """The head fits but the body does not: the head's allocation is undone, nothing is
    published, and later messages land where the front expects them."""
    ch = harness.channel
    big = b"z" * (ch.max_chunk)
    ch.send_nowait(1, big, Kind.RESPONSE_BODY, 0)  # a quarter of the arena, held by the front
    ch.send_nowait(2, big, Kind.RESPONSE_BODY, 0)
    ch.send_nowait(3, big, Kind.RESPONSE_BODY, 0)
    assert not ch.send_response_nowait(4, 200, [], big, True)
    held = [harness.front.recv_ready() for _ in range(3)]
    assert harness.front.recv_ready() is None  # nothing half-published
    for m in held:
        assert m is not None
        m.release()
    assert ch.send_response_nowait(4, 200, [], big, True)
    assert harness.drain() == general_path(4, 200, [(CL, b"%d" % len(big))], big)


def test_a_body_over_one_chunk_goes_out_in_pieces(harness: Harness) -> None:
    """Bodies larger than ``max_chunk`` take the general path: Flag.MORE on all but the last."""
    body = b"y" * (harness.channel.max_chunk + 10)
    sent = harness.serve(lambda r: Response(200, [], body))
    assert [(k, f) for _, k, f, _ in sent] == [
        ("RESPONSE_HEAD", 0), ("RESPONSE_BODY", int(Flag.MORE)), ("RESPONSE_BODY", int(Flag.END))]
    assert b"".join(d for _, k, _, d in sent if k == "RESPONSE_BODY") == body  # type: ignore[misc]


def test_a_header_list_changed_after_the_response_was_built_is_still_checked(
    harness: Harness,
) -> None:
    """A str header slipped into ``Response.headers`` later cannot be encoded: the worker
    cancels the response (it was started) instead of sending a malformed head."""
    def handler(request: Request) -> Response:
        resp = Response(200, [], b"x")
        resp.headers.append(("x-late", "str"))  # type: ignore[arg-type]
        return resp

    assert harness.serve(handler) == [(1, "CANCEL", int(Flag.END), b"")]
    assert harness.serve(lambda r: Response(200, [], b"ok"))[1][3] == b"ok"  # serving goes on


def test_a_handler_error_is_a_500(harness: Harness) -> None:
    def handler(request: Request) -> Response:
        raise RuntimeError("boom")

    sent = harness.serve(handler)
    assert sent[0][3].status == 500  # type: ignore[attr-defined]
    assert sent[1][3] == b"Internal Server Error\n"


# ------------------------------------------------------------------- response_headers


def test_response_headers_lower_cases_and_encodes() -> None:
    assert response_headers([("Content-Type", "text/plain"), (b"X-Raw", b"\xe9"),
                             ("x-latin", "\xe9")]) == [
        (b"content-type", b"text/plain"), (b"x-raw", b"\xe9"), (b"x-latin", b"\xe9")]
    assert response_headers(iter([("a", "b")])) == [(b"a", b"b")]
    assert response_headers([]) == []


@pytest.mark.parametrize("header", [
    ("", "v"), ("bad name", "v"), ("colon:", "v"), ("x", "a\r\nb"), ("x", "nul\x00"),
    ("x", "lf\n"), (b"x\xff", b"v"), ("x", "\u20ac"), ("only-one",), ("a", "b", "c"),
])
def test_response_headers_refuses_what_the_front_would_refuse(header: tuple[Any, ...]) -> None:
    """A ValueError (a 500 for the handler), never a head the front takes for a violation."""
    with pytest.raises(ValueError):
        response_headers([header])
    with pytest.raises(ValueError):
        Response(200, [header])


def test_response_headers_str_only_refuses_bytes() -> None:
    """PEP 3333: WSGI header names and values are str."""
    with pytest.raises(TypeError):
        response_headers([(b"x", "v")], True)
    with pytest.raises(TypeError):
        response_headers([("x", 1)], True)
    assert response_headers([("X", "v")], True) == [(b"x", b"v")]


# --------------------------------------------------------------------------------- WSGI


def wsgi_environ(harness: Harness, **request: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    sent = harness.serve(WSGIHandler(app), **request)
    assert sent[1][3] == b"ok"
    return seen


def test_wsgi_environ_from_the_head(harness: Harness) -> None:
    env = wsgi_environ(
        harness, method=b"POST", target=b"/caf%C3%A9/\xe9?q=%20&x=1",
        headers=[(b"host", b"example.com:8080"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
                 (b"x-many", b"1"), (b"x-many", b"2"), (b"x_forged", b"no"),
                 (b"content-type", b"text/x"), (b"content-length", b"0"), (b"host", b"other")],
        http_version=b"1.0", scheme="https", client=("10.1.2.3", 4567),
    )
    assert env["REQUEST_METHOD"] == "POST"
    assert env["PATH_INFO"] == "/caf\xc3\xa9/\xe9"  # unquoted bytes, as latin-1
    assert env["QUERY_STRING"] == "q=%20&x=1"
    assert env["RAW_URI"] == "/caf%C3%A9/\xe9?q=%20&x=1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_MANY"] == "1, 2"
    assert "HTTP_X_FORGED" not in env
    assert env["CONTENT_TYPE"] == "text/x" and env["CONTENT_LENGTH"] == "0"
    assert "HTTP_CONTENT_TYPE" not in env
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("example.com", "8080")  # first Host
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.1.2.3", "4567")
    assert env["wsgi.input"].read() == b""


def test_wsgi_environ_server_address_and_defaults(harness: Harness) -> None:
    env = wsgi_environ(harness, headers=[], server=("10.0.0.9", 81))
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("10.0.0.9", "81")
    assert "REMOTE_ADDR" not in env
    env = wsgi_environ(harness, headers=[])
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "80")
    assert env["PATH_INFO"] == "/hello" and env["SCRIPT_NAME"] == ""


def test_wsgi_status_and_headers_are_checked_once_and_cached(harness: Harness) -> None:
    """A bad status or header is a 500 every time, even after good ones were cached."""
    def app_with(status: str, headers: list[tuple[str, str]]) -> WSGIHandler:
        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response(status, headers)
            return [b"ok"]
        return WSGIHandler(app)

    for _ in range(2):
        assert harness.serve(app_with("201 Created", [("X-A", "1")]))[0][3].status == 201  # type: ignore[attr-defined]
        for status, headers in [("2001 No", []), ("200 OK", [("X-A", "a\nb")]),
                                ("200 OK", [("bad name", "v")])]:
            assert harness.serve(app_with(status, headers))[0][3].status == 500  # type: ignore[attr-defined]


def test_a_head_over_half_the_arena_goes_out_in_pieces(harness: Harness) -> None:
    """A head too large for one message is the chunking path's: Flag.MORE pieces, then the
    body; the front joins the pieces into the same head."""
    big = "v" * (harness.worker_region.geometry.resp_arena_size // 2)
    h = harness
    rid = h.next_id
    h.next_id += 1
    h.front.send_nowait(rid, encode_request_head(RequestHead(b"GET", b"/", [])),
                        Kind.REQUEST_HEAD, Flag.END)
    msg = h.worker._recv()
    head_parts: list[bytes] = []
    body = b""
    done = threading.Event()

    def front() -> None:  # the head does not fit at once: consume while the worker sends
        nonlocal body
        deadline = time.monotonic() + 10
        while not done.is_set() or body == b"":
            assert time.monotonic() < deadline, "the response never ended"
            m = h.front.recv_ready()
            if m is None:
                continue
            with m:
                if m.kind == Kind.RESPONSE_HEAD:
                    head_parts.append(bytes(m.data))
                    assert bool(m.more) == (m.flags & Flag.MORE != 0)
                else:
                    assert m.end
                    body = bytes(m.data)

    t = threading.Thread(target=front)
    t.start()
    try:
        h.worker._dispatch(msg, lambda r: Response(200, [("X-Big", big)], b"ok"))
    finally:
        done.set()
        t.join(10)
    assert len(head_parts) > 1
    assert decode_response_head(b"".join(head_parts)).headers == [
        (b"x-big", big.encode()), (CL, b"2")]
    assert body == b"ok"


# ------------------------------------------------------------------- an unread body


def test_an_unread_body_is_not_waited_for(harness: Harness) -> None:
    """The handler answered without reading the body: the worker is done with the request at
    once (the front may never send the rest), and a piece that does come later is released
    as stale before the next request is served."""
    h, front = harness, harness.front
    front.send_nowait(1, encode_request_head(RequestHead(b"POST", b"/a", [])),
                      Kind.REQUEST_HEAD, 0)
    h.worker._dispatch(h.worker._recv(), lambda r: Response(200, [], b"a"))  # returns
    assert h.drain() == general_path(1, 200, [(CL, b"1")], b"a")
    front.send_nowait(1, b"late body", Kind.REQUEST_BODY, Flag.END)
    front.send_nowait(2, encode_request_head(RequestHead(b"GET", b"/b", [])),
                      Kind.REQUEST_HEAD, Flag.END)
    while not h.drain():
        h.worker._dispatch(h.worker._recv(), lambda r: Response(200, [], r.path.encode()))
    assert h.channel.statistics().live_leases == 0  # every piece released


def test_late_pieces_of_an_answered_body_are_released_while_the_next_body_is_read(
    harness: Harness,
) -> None:
    """Pieces of an answered request's body that arrive while the next request reads its own
    body are released at once, not kept (they would hold arena space its body may need);
    the next request's own pieces and the heads queued behind it are kept."""
    h, front = harness, harness.front
    front.send_nowait(1, encode_request_head(RequestHead(b"POST", b"/a", [])),
                      Kind.REQUEST_HEAD, 0)
    h.worker._dispatch(h.worker._recv(), lambda r: Response(200, [], b"a"))
    front.send_nowait(2, encode_request_head(RequestHead(b"POST", b"/b", [])),
                      Kind.REQUEST_HEAD, 0)
    front.send_nowait(1, b"stale " * 100, Kind.REQUEST_BODY, 0)
    front.send_nowait(3, encode_request_head(RequestHead(b"POST", b"/c", [])),
                      Kind.REQUEST_HEAD, 0)
    front.send_nowait(3, b"body of c", Kind.REQUEST_BODY, Flag.END)
    front.send_nowait(1, b"stale end", Kind.REQUEST_BODY, Flag.END)
    front.send_nowait(2, b"body of b", Kind.REQUEST_BODY, Flag.END)

    def read_body(request: Request) -> Response:
        return Response(200, [], bytes(request.body))

    h.worker._dispatch(h.worker._recv(), read_body)
    # c's head and body are queued for their turn; nothing of a's is kept
    assert [(m.id, Kind(m.kind).name) for m in h.worker._pending] == [
        (3, "REQUEST_HEAD"), (3, "REQUEST_BODY")]
    h.worker._dispatch(h.worker._recv(), read_body)
    bodies = [d for _, k, _, d in h.drain() if k == "RESPONSE_BODY"]
    assert bodies == [b"a", b"body of b", b"body of c"]
    assert h.channel.statistics().live_leases == 0  # every piece released
