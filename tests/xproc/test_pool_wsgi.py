"""WSGI applications in real worker processes, driven through the real Pool.

Each test starts a pool of ``python -m zeus.worker tests.apps.wsgi_apps:... --interface wsgi``
and talks to it as the HTTP front would: ``Pool.submit`` a request head (and body), then read
the response head and body chunks out of the worker's arena.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from zeus.core.codec import RequestHead
from zeus.pool import Pool, PoolConfig, ResponseAborted, worker_argv

from .poolkit import fetch, head, read_reply, run

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the workers import tests.apps.*; so does this process

from tests.apps.wsgi_apps import create_flask_app, pattern  # noqa: E402

MiB = 1 << 20
T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def pool_of(app: str, *, workers: int = 1, **config: Any) -> AsyncIterator[Pool]:
    """A started pool of WSGI workers running ``app``; always stopped on the way out."""
    pool = Pool(PoolConfig(worker_argv(app, "wsgi"), workers=workers,
                           env={"PYTHONPATH": ROOT}, **config))
    try:
        await pool.start()
        yield pool
    finally:
        await pool.stop()


APP = "tests.apps.wsgi_apps:app"


# --------------------------------------------------------------------------- environ


def test_environ_follows_pep_3333() -> None:
    """The environ carries the CGI variables, the wsgi.* keys, and every header."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            r = await fetch(pool, "/environ?a=1&b=%20x", "POST", b"hello", [
                (b"content-type", b"text/plain"), (b"content-length", b"5"),
                (b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2"),
                (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x_smuggled", b"evil"),
                (b"accept", b"*/*"),
            ])
            assert r.status == 200
            env = r.json()
            assert env["REQUEST_METHOD"] == "POST"
            assert env["SCRIPT_NAME"] == ""
            assert env["PATH_INFO"] == "/environ"
            assert env["QUERY_STRING"] == "a=1&b=%20x"
            assert env["CONTENT_TYPE"] == "text/plain"
            assert env["CONTENT_LENGTH"] == "5"
            assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
            assert env["SERVER_NAME"] == "127.0.0.1"
            assert env["SERVER_PORT"] == "8000"
            assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
            assert env["REMOTE_ADDR"] == "127.0.0.1"
            assert env["REMOTE_PORT"] == "50123"
            assert env["HTTP_HOST"] == "testserver"
            assert env["HTTP_ACCEPT"] == "*/*"
            assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1, 10.0.0.2"
            assert env["HTTP_COOKIE"] == "a=1; b=2"
            assert "HTTP_X_SMUGGLED" not in env  # underscores: dropped, as gunicorn does
            assert env["wsgi.version"] == [1, 0]
            assert env["wsgi.url_scheme"] == "http"
            assert env["wsgi.input"] == "WSGIInput"
            assert env["wsgi.input_terminated"] is True
            assert env["wsgi.errors is stderr"] is True
            assert env["wsgi.multithread"] is False
            assert env["wsgi.multiprocess"] is True
            assert env["wsgi.run_once"] is False
            assert env["wsgi.file_wrapper"] == "type"

    run(body)


def test_path_info_is_percent_decoded_then_latin1() -> None:
    """PATH_INFO is the percent-decoded path's bytes as latin-1 text (PEP 3333 "native
    strings"); without head.server, SERVER_NAME and SERVER_PORT come from the Host header."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            ex = await pool.submit(RequestHead(
                b"GET", b"/environ/caf%C3%A9%2Fx?q=%C3%A9", [(b"host", b"example.org:8443")],
                scheme="https",
            ), b"")
            env = (await read_reply(ex)).json()
            assert env["PATH_INFO"] == "/environ/café/x".encode().decode("latin-1")
            assert env["QUERY_STRING"] == "q=%C3%A9"
            assert env["RAW_URI"] == "/environ/caf%C3%A9%2Fx?q=%C3%A9"
            assert env["SERVER_NAME"] == "example.org"
            assert env["SERVER_PORT"] == "8443"
            assert env["wsgi.url_scheme"] == "https"
            assert "REMOTE_ADDR" not in env

    run(body)


# --------------------------------------------------------------------------- bodies


def test_50_mib_upload_streams_through_wsgi_input() -> None:
    """A 50 MiB body, sent in pieces, is read through wsgi.input in 64 KiB reads: every
    read is full (but the last), the digest matches, and the worker never needs it whole."""
    size = 50 * MiB
    data = os.urandom(MiB) * 50

    async def body() -> None:
        async with pool_of(APP) as pool:
            ex = await pool.submit(head("/upload?65536", "POST"), streaming=True)
            view = memoryview(data)
            for pos in range(0, size, 3 * MiB + 17):
                await ex.send_body(view[pos : pos + 3 * MiB + 17])
            await ex.send_body(b"", end=True)
            r = await read_reply(ex)
            assert r.status == 200
            got = r.json()
            assert got["length"] == size
            assert got["sha256"] == hashlib.sha256(data).hexdigest()
            assert got["largest"] == 65536
            assert got["reads"] == -(-size // 65536)

    run(body)


def test_a_body_given_in_pieces_reaches_wsgi_input_whole_and_in_order() -> None:
    """A body known up front may be handed over in the pieces it arrived in (the front does
    so, instead of joining them): odd sizes, an empty piece and one over a message's size
    read back as the same bytes, in order."""
    pieces = [os.urandom(n) for n in (1, 0, 65_537, 3, 300_001, 4096)]
    data = b"".join(pieces)

    async def body() -> None:
        async with pool_of(APP) as pool:
            r = await read_reply(await pool.submit(head("/upload?7000", "POST", [
                (b"content-length", str(len(data)).encode())]), pieces))
            assert r.status == 200
            got = r.json()
            assert got["length"] == len(data)
            assert got["sha256"] == hashlib.sha256(data).hexdigest()

    run(body)


def test_requests_without_a_body_read_an_empty_input_every_time() -> None:
    """A request whose head comes with END gets the shared empty ``wsgi.input``: read,
    readline, readlines and iteration all find it at its end, request after request (a close
    by the adapter after one request leaves nothing behind for the next)."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            for _ in range(3):
                got = (await read_reply(await pool.submit(head("/upload?7", "POST")))).json()
                assert (got["length"], got["reads"]) == (0, 0)
                got = (await read_reply(await pool.submit(head("/lines", "POST")))).json()
                assert (got["first"], got["rest_of_first"], got["some"], got["others"]) == (
                    "", "", [], [])

    run(body)


def test_readline_readlines_and_iteration() -> None:
    """readline(limit), readline(), readlines(hint) and iteration split lines across chunks."""
    data = b"first line\nsecond\nthird\nfourth\n" + b"x" * 1000 + b"\nlast without newline"

    async def body() -> None:
        async with pool_of(APP) as pool:
            ex = await pool.submit(head("/lines", "POST"), streaming=True)
            for i in range(0, len(data), 7):  # lines straddle message boundaries
                await ex.send_body(data[i : i + 7])
            await ex.send_body(b"", end=True)
            got = (await read_reply(ex)).json()
            assert got["first"] == "first"
            assert got["rest_of_first"] == " line\n"
            assert got["some"] == ["second\n", "third\n"]
            assert got["others"] == ["fourth\n", "x" * 1000 + "\n", "last without newline"]

    run(body)


def test_50_mib_response_streams_out() -> None:
    """A 50 MiB response generated in 1 MiB chunks arrives whole and in order."""
    size = 50 * MiB

    async def body() -> None:
        async with pool_of(APP) as pool:
            ex = await pool.submit(head(f"/big?{size}"), b"")
            resp = await ex.response()
            assert resp.status == 200
            h = hashlib.sha256()
            n = chunks = 0
            while (chunk := await ex.next_chunk()) is not None:
                with chunk:
                    h.update(chunk.data)
                    n += chunk.data.nbytes
                    chunks += 1
            expected = hashlib.sha256()
            for part in pattern(size):
                expected.update(part)
            assert n == size
            assert h.hexdigest() == expected.hexdigest()
            assert chunks >= 50

    run(body)


# --------------------------------------------------------------------------- responses


def test_write_callable_then_iterable() -> None:
    """Bytes given to write() go first, then what the iterable yields."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            r = await fetch(pool, "/write")
            assert r.status == 200
            assert r.header("content-type") == "text/plain"
            assert r.body == b"written twice, then returned"

    run(body)


def test_exc_info_before_headers_replaces_the_response() -> None:
    """start_response(exc_info) before any body was sent replaces status and headers."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            r = await fetch(pool, "/exc-before")
            assert r.status == 503
            assert r.header("x-recovered") == "yes"
            assert r.body == b"recovered\n"

    run(body)


def test_exc_info_after_headers_reraises_and_aborts() -> None:
    """start_response(exc_info) after the headers went out re-raises: the response is
    aborted (the front sees ResponseAborted), and the worker keeps serving."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            ex = await pool.submit(head("/exc-after"), b"")
            assert (await ex.response()).status == 200
            with pytest.raises(ResponseAborted):
                while (chunk := await ex.next_chunk()) is not None:
                    assert bytes(chunk.data) == b"first chunk, "
                    chunk.release()
            r = await fetch(pool, "/write")
            assert r.status == 200

    run(body)


def test_exception_before_start_is_a_500() -> None:
    """An application that raises before responding gets a 500; the worker survives."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            pid = pool.workers[0].pid
            r = await fetch(pool, "/raise")
            assert r.status == 500
            assert r.body == b"Internal Server Error\n"
            ex = await pool.submit(head("/raise-after"), b"")
            assert (await ex.response()).status == 200
            with pytest.raises(ResponseAborted):
                while (chunk := await ex.next_chunk()) is not None:
                    chunk.release()
            assert (await fetch(pool, "/write")).status == 200
            assert pool.workers[0].pid == pid

    run(body)


def test_close_is_called() -> None:
    """close() of the returned iterable runs, for a one-shot body and a streamed one."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            assert (await fetch(pool, "/closed?one")).json() == {"closed": False}
            r = await fetch(pool, "/closing?one")
            assert (r.status, r.body) == (200, b"close")
            r = await fetch(pool, "/closing-big?two")
            assert r.body == b"a" * 1000 + b"b" * 1000 + b"c" * 1000
            # One worker serves one request at a time: these run after close() returned.
            assert (await fetch(pool, "/closed?one")).json() == {"closed": True}
            assert (await fetch(pool, "/closed?two")).json() == {"closed": True}

    run(body)


def test_lazy_start_response_and_empty_bodies() -> None:
    """start_response may be called during iteration; empty chunks send nothing early;
    an empty body is a head alone."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            r = await fetch(pool, "/lazy")
            assert (r.status, r.body) == (201, b"lazy")
            r = await fetch(pool, "/empty")
            assert (r.status, r.body, r.header("x-empty")) == (204, b"", "1")

    run(body)


def test_file_wrapper(tmp_path: Path) -> None:
    """wsgi.file_wrapper streams a real file (read straight into the arena), a read()-only
    object (iterated), and stops at the application's Content-Length."""
    data = os.urandom(5 * MiB + 123)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)

    async def body() -> None:
        async with pool_of(APP) as pool:
            r = await fetch(pool, f"/file?{path}")
            assert r.status == 200
            assert r.body == data
            r = await fetch(pool, f"/file-iter?{path}")
            assert r.body == data
            r = await fetch(pool, f"/file-cl?{path}&1000")
            assert r.header("content-length") == "1000"
            assert r.body == data[:1000]

    run(body)


# --------------------------------------------------------------------------- Flask


FLASK_CASES: list[tuple[str, str, bytes, list[tuple[bytes, bytes]]]] = [
    ("GET", "/hello", b"", []),
    ("GET", "/json/42?q=zeus", b"", [(b"user-agent", b"zeus-test/1")]),
    ("POST", "/form", b"a=1&b=two+words", [
        (b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", b"15"),
    ]),
    ("GET", "/cookie", b"", []),
    ("GET", "/go", b"", []),
    ("GET", "/stream", b"", []),
    ("GET", "/missing", b"", []),
    ("GET", "/fail", b"", []),
    ("PUT", "/hello", b"", []),
]
COMPARED = ("content-type", "content-length", "location", "set-cookie", "allow")


def _normal(name: str, values: list[str]) -> list[str]:
    """Allow lists its methods in set order, which differs between processes."""
    if name == "allow" and values:
        return [", ".join(sorted(m.strip() for v in values for m in v.split(",")))]
    return values


def _multipart() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    boundary = "zeusboundary"
    payload = os.urandom(300_000)
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
        f"filename=\"data.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                  (b"content-length", str(len(body)).encode())]


def test_flask_app_answers_as_under_its_test_client() -> None:
    """A Flask application behind Zeus gives the status, body and headers its own test
    client gives."""
    upload, upload_headers = _multipart()
    cases = [*FLASK_CASES, ("POST", "/upload", upload, upload_headers)]
    client = create_flask_app().test_client()
    expected = []
    for method, target, data, headers in cases:
        path, _, query = target.partition("?")
        resp = client.open(path, method=method, query_string=query, data=data,
                           headers=[(k.decode(), v.decode()) for k, v in headers])
        expected.append((resp.status_code, resp.get_data(),
                         {h: _normal(h, resp.headers.getlist(h)) for h in COMPARED}))

    async def body() -> None:
        async with pool_of("tests.apps.wsgi_apps:create_flask_app()") as pool:
            for (method, target, data, headers), want in zip(cases, expected, strict=True):
                r = await fetch(pool, target, method, data, headers)
                got = (r.status, r.body, {
                    h: _normal(h, [v.decode("latin-1") for k, v in r.headers if k == h.encode()])
                    for h in COMPARED
                })
                assert got == want, f"{method} {target}"

    run(body)
