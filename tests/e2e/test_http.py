"""HTTP/1.1 as a client sees it: methods, keep-alive, pipelining, chunked bodies both ways,
``Expect: 100-continue`` (RFC 9110, RFC 9112), through the real ``zeus serve``."""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from .helpers import Server, StartServer, build_request, chunked

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_each_method_reaches_the_app_with_its_body(server: Server, method: str) -> None:
    body = b"" if method in ("GET", "OPTIONS") else b"some request body"
    with server.conn() as c:
        resp = c.request(method, "/method", body=body)
    assert resp.status == 200
    assert resp.body == f"{method} {len(body)}".encode()
    assert resp.header("server") == "zeus"
    assert email.utils.parsedate_to_datetime(resp.header("date") or "") is not None
    assert resp.header_count("date") == 1
    assert resp.header("content-length") == str(len(resp.body))


@pytest.mark.timeout(30)
def test_head_sends_the_headers_of_get_and_no_body(server: Server) -> None:
    with server.conn() as c:
        get = c.request("GET", "/hello")
        head = c.request("HEAD", "/hello")
        # Had HEAD carried a body, it would be read here as the next response's start.
        after = c.request("GET", "/say?after-head")
    assert head.status == 200
    assert head.header("content-length") == str(len(get.body)) == "17"
    assert head.header("content-type") == "text/plain"
    assert head.header("date") and head.header("server") == "zeus"
    assert after.body == b"after-head"


@pytest.mark.timeout(30)
def test_keep_alive_serves_several_requests_on_one_connection(server: Server) -> None:
    with server.conn() as c:
        for i in range(10):
            resp = c.request("GET", f"/say?{i}")
            assert (resp.status, resp.body) == (200, str(i).encode())
            assert resp.header("connection") == "keep-alive"
    with httpx.Client(base_url=server.url()) as client:
        ports = set()
        for _ in range(5):
            r = client.get("/hello")
            assert r.status_code == 200
            ports.add(r.extensions["network_stream"].get_extra_info("client_addr")[1])
        assert len(ports) == 1, "httpx had to reconnect: the server dropped keep-alive"


@pytest.mark.timeout(30)
def test_connection_close_is_honoured(server: Server) -> None:
    with server.conn() as c:
        resp = c.request("GET", "/hello", [("Connection", "close")])
        assert resp.status == 200
        assert resp.header("connection") == "close"
        assert c.closed_by_server()


@pytest.mark.timeout(30)
def test_http10_without_keep_alive_closes_after_the_response(server: Server) -> None:
    with server.conn() as c:
        c.send(build_request("GET", "/hello", version="HTTP/1.0"))
        resp = c.read_response()
        assert resp.status == 200 and resp.body == b"Hello from Zeus!\n"
        assert c.closed_by_server()


@pytest.mark.timeout(30)
def test_http10_with_keep_alive_keeps_the_connection(server: Server) -> None:
    with server.conn() as c:
        for i in range(3):
            c.send(build_request("GET", f"/say?{i}", [("Connection", "keep-alive")],
                                 version="HTTP/1.0"))
            resp = c.read_response()
            assert (resp.status, resp.body) == (200, str(i).encode())
            assert resp.header("connection") == "keep-alive"


@pytest.mark.timeout(30)
def test_http10_streamed_response_is_delimited_by_close(server: Server) -> None:
    # No chunked encoding in HTTP/1.0: a body of unknown length ends with the connection.
    with server.conn() as c:
        c.send(build_request("GET", "/chunks?3", [("Connection", "keep-alive")],
                             version="HTTP/1.0"))
        resp = c.read_response()
        assert resp.status == 200 and not resp.chunked
        assert resp.body == b"chunk 0\nchunk 1\nchunk 2\n"


@pytest.mark.timeout(30)
def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    start_server: StartServer,
) -> None:
    server = start_server("--keep-alive", "1")
    with server.conn() as c:
        assert c.request("GET", "/hello").status == 200
        c.sock.settimeout(5)
        assert c.closed_by_server()


@pytest.mark.timeout(30)
def test_pipelined_requests_are_answered_complete_and_in_order(server: Server) -> None:
    batch = (
        build_request("GET", "/say?first")
        + build_request("POST", "/echo", body=b"second, with a body")
        + build_request("GET", "/say?third")
    )
    with server.conn() as c:
        c.send(batch)  # one write: the server sees all three at once
        bodies = [c.read_response().body for _ in range(3)]
        assert bodies == [b"first", b"second, with a body", b"third"]
        assert c.request("GET", "/say?still-open").body == b"still-open"


@pytest.mark.timeout(30)
def test_pipelined_head_slow_and_chunked_responses_keep_their_order(server: Server) -> None:
    batch = (
        build_request("GET", "/sleep?0.3")
        + build_request("HEAD", "/hello")
        + build_request("GET", "/chunks?3")
        + build_request("GET", "/say?last")
    )
    with server.conn() as c:
        c.send(batch)
        assert c.read_response().body == b"slept"
        head = c.read_response(head_request=True)
        assert head.status == 200 and head.header("content-length") == "17"
        assert c.read_response().body == b"chunk 0\nchunk 1\nchunk 2\n"
        assert c.read_response().body == b"last"


@pytest.mark.timeout(30)
def test_chunked_request_body_reaches_the_app_decoded(server: Server) -> None:
    parts = [b"hello ", b"chunked ", b"x" * 100_000, b" world"]
    with server.conn() as c:
        c.send(build_request("POST", "/echo", [("Transfer-Encoding", "chunked")])
               + chunked(parts))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.body == b"".join(parts)
        # The connection is still in sync after the last-chunk.
        assert c.request("GET", "/say?next").body == b"next"


@pytest.mark.timeout(30)
def test_chunked_request_body_sent_piece_by_piece(server: Server) -> None:
    parts = [b"a" * 1000, b"b" * 70_000, b"c"]
    with server.conn() as c:
        c.send(build_request("POST", "/hash", [("Transfer-Encoding", "chunked")]))
        for p in parts:
            c.send(b"%x\r\n%s\r\n" % (len(p), p))
        c.send(b"0\r\n\r\n")
        resp = c.read_response()
    whole = b"".join(parts)
    assert resp.body == f"{hashlib.sha256(whole).hexdigest()} {len(whole)}".encode()


@pytest.mark.timeout(30)
def test_streamed_response_without_length_is_chunked(server: Server) -> None:
    with server.conn() as c:
        resp = c.request("GET", "/chunks?50")
        assert resp.status == 200
        assert resp.chunked and resp.header("content-length") is None
        assert resp.body == b"".join(b"chunk %d\n" % i for i in range(50))
        assert c.request("GET", "/say?in-sync").body == b"in-sync"


@pytest.mark.timeout(30)
def test_expect_100_continue_is_answered_before_the_body_is_sent(server: Server) -> None:
    body = b"the body, sent only after 100 Continue"
    with server.conn() as c:
        c.send(build_request("POST", "/echo", [("Expect", "100-continue"),
                                               ("Content-Length", str(len(body)))]))
        interim = c.read_until(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(body)
        resp = c.read_response()
        assert resp.status == 200 and resp.body == body


@pytest.mark.timeout(30)
def test_http_client_and_httpx_agree(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("PUT", "/echo", body=b"via http.client")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"via http.client")
        conn.request("GET", "/chunks?2")
        r = conn.getresponse()
        assert r.getheader("transfer-encoding") == "chunked"
        assert r.read() == b"chunk 0\nchunk 1\n"
    finally:
        conn.close()
    r2 = httpx.post(server.url("/echo"), content=iter([b"gen", b"erated"]))  # chunked upload
    assert r2.status_code == 200 and r2.content == b"generated"


@needs_curl
@pytest.mark.timeout(30)
def test_curl_reuses_the_connection_and_sees_head_headers(server: Server) -> None:
    out = subprocess.run(
        [CURL, "-sS", "-v", "--http1.1", server.url("/say?one"), server.url("/say?two")],
        capture_output=True, timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"onetwo"
    assert b"Re-using existing connection" in out.stderr
    head = subprocess.run([CURL, "-sS", "-I", server.url("/hello")], capture_output=True,
                          timeout=20)
    assert head.returncode == 0, head.stderr
    assert b"HTTP/1.1 200 OK" in head.stdout and b"content-length: 17" in head.stdout


@needs_curl
@pytest.mark.timeout(30)
def test_curl_upload_with_expect_100_continue(server: Server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: curl sends Expect: 100-continue for it
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    out = subprocess.run(
        [CURL, "-sS", "-v", "--http1.1", "-H", "Expect: 100-continue", "-T", str(path),
         "--expect100-timeout", "10", server.url("/hash")],
        capture_output=True, timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{hashlib.sha256(data).hexdigest()} {len(data)}".encode()
    assert b"HTTP/1.1 100 Continue" in out.stderr
    chunked_out = subprocess.run(
        [CURL, "-sS", "--http1.1", "-H", "Transfer-Encoding: chunked", "--data-binary",
         f"@{path}", server.url("/hash")],
        capture_output=True, timeout=20,
    )
    assert chunked_out.stdout == out.stdout
