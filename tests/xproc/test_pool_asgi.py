"""ASGI applications in real worker processes, driven through the real Pool.

Each test starts a pool of ``python -m zeus.worker tests.apps.asgi_apps:... --interface asgi``
(or, where the ordering of lifespan and readiness matters, a worker that hands
``serve_asgi`` the ``Worker.connect`` factory) and talks to it as the HTTP front would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from zeus import Channel, Region
from zeus.core.codec import decode_response_head, encode_request_head
from zeus.core.layout import Flag, Kind, Word
from zeus.exitcodes import WorkerExit
from zeus.pool import BootFailure, Pool, PoolConfig, ResponseAborted, WState, worker_argv

from .poolkit import fetch, head, read_reply, run

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the workers import tests.apps.*; so does this process

from tests.apps.asgi_apps import PATTERN, create_fastapi_app  # noqa: E402

MiB = 1 << 20
T = TypeVar("T")
APP = "tests.apps.asgi_apps:app"

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------- helpers


def factory_argv(app: str) -> list[str]:
    """A worker that attaches to its channel only after lifespan startup."""
    module, _, attr = app.partition(":")
    code = (
        "from zeus.adapters.asgi import serve_asgi; from zeus.worker import Worker; "
        f"from {module} import {attr}; serve_asgi(Worker.connect, {attr})"
    )
    return [sys.executable, "-c", code]


@contextlib.asynccontextmanager
async def pool_of(app: str, *, workers: int = 1, concurrency: int = 16,
                  env: dict[str, str] | None = None, argv: list[str] | None = None,
                  **config: Any) -> AsyncIterator[Pool]:
    """A started pool of ASGI workers running ``app``; always stopped on the way out."""
    pool = Pool(PoolConfig(argv or worker_argv(app, "asgi"), workers=workers,
                           concurrency=concurrency, env={"PYTHONPATH": ROOT, **(env or {})},
                           **config))
    try:
        await pool.start()
        yield pool
    finally:
        await pool.stop()


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` from the loop until it holds; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- scope, lifespan


def test_scope_follows_asgi_3() -> None:
    """The HTTP scope carries the request as the ASGI 3 spec describes it."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            r = await fetch(pool, "/scope/caf%C3%A9%2Fx?a=1&b=%20", "POST", b"x",
                            [(b"x-one", b"1"), (b"x-one", b"2")])
            assert r.status == 200
            scope = r.json()
            assert scope["type"] == "http"
            assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
            assert scope["http_version"] == "1.1"
            assert scope["method"] == "POST"
            assert scope["scheme"] == "http"
            assert scope["path"] == "/scope/café/x"
            assert scope["raw_path"] == "/scope/caf%C3%A9%2Fx"
            assert scope["query_string"] == "a=1&b=%20"
            assert scope["root_path"] == ""
            assert scope["headers"] == [["host", "testserver"], ["x-one", "1"], ["x-one", "2"]]
            assert scope["client"] == ["127.0.0.1", 50123]
            assert scope["server"] == ["127.0.0.1", 8000]
            assert scope["state"]["boot"].startswith("booted in ")

    run(body)


def test_lifespan_runs_around_serving(tmp_path: Path) -> None:
    """Startup runs before the first request (its state reaches every request's scope),
    shutdown when the worker stops; the worker exits 0 and kept its heartbeat going."""
    marker = tmp_path / "marker"

    async def body() -> None:
        async with pool_of(APP, env={"ZEUS_TEST_MARKER": str(marker)}) as pool:
            w = pool.workers[0]
            r = await fetch(pool, "/state")
            assert r.json() == {"boot": f"booted in {w.pid}"}
            assert marker.read_text() == "startup\n"
            await wait_until(lambda: w.region.memory.load_u64(Word.WORKER_HEARTBEAT) > 0)
        assert w.process.returncode == 0
        assert marker.read_text() == "startup\nshutdown\n"

    run(body)


@pytest.mark.parametrize("app", ["failing_app", "raising_startup_app"])
def test_lifespan_startup_failure_is_a_boot_failure(app: str) -> None:
    """startup.failed, or an exception during startup, stops the worker with BOOT_FAILURE
    before it is ready, and the pool gives up instead of restarting it forever."""

    async def body() -> None:
        with pytest.raises(BootFailure):
            async with pool_of(f"tests.apps.asgi_apps:{app}",
                               argv=factory_argv(f"tests.apps.asgi_apps:{app}")):
                pass

    run(body)


def test_lifespan_failure_exit_code() -> None:
    """Run by the stock ``python -m zeus.worker``, a failed startup exits with BOOT_FAILURE."""
    region = Region.create(4 << 20, 64)
    try:
        proc = subprocess.run(
            worker_argv("tests.apps.asgi_apps:failing_app", "asgi"), pass_fds=region.pass_fds,
            env={"PYTHONPATH": ROOT, **region.child_env()}, capture_output=True, timeout=30,
        )
    finally:
        region.close()
    assert proc.returncode == WorkerExit.BOOT_FAILURE
    lines = proc.stderr.decode().strip().splitlines()
    assert lines == ["zeus worker: ASGI lifespan startup failed: database unreachable"]


def test_app_without_lifespan_is_served() -> None:
    """An application that refuses the lifespan scope is served all the same."""

    async def body() -> None:
        async with pool_of("tests.apps.asgi_apps:no_lifespan_app") as pool:
            r = await fetch(pool, "/")
            assert (r.status, r.body) == (200, b"served without lifespan\n")

    run(body)


# --------------------------------------------------------------------------- concurrency


def test_requests_run_concurrently_in_one_worker() -> None:
    """Ten requests are in flight in one worker at once: each waits until all ten have
    arrived, which only happens if none blocks the others."""

    async def body() -> None:
        async with pool_of(APP, workers=1, concurrency=16) as pool:
            replies = await asyncio.gather(*[fetch(pool, "/gather?ten&10") for _ in range(10)])
            assert {r.status for r in replies} == {200}
            assert {r.json()["pid"] for r in replies} == {pool.workers[0].pid}
            assert {r.json()["in_flight"] for r in replies} == {10}

    run(body)


# --------------------------------------------------------------------------- bodies


def test_body_streams_both_ways() -> None:
    """/echo answers each body chunk as it arrives: the first piece comes back before the
    rest is sent, and 32 MiB round-trip intact while both directions stream at once."""
    data = os.urandom(MiB) * 32

    async def body() -> None:
        async with pool_of(APP) as pool:
            ex = await pool.submit(head("/echo", "POST"), streaming=True)
            await ex.send_body(data[:1000])
            assert (await ex.response()).status == 200
            first = await ex.next_chunk()
            assert first is not None
            with first:
                assert bytes(first.data) == data[:1000]

            async def send_rest() -> None:
                view = memoryview(data)
                for pos in range(1000, len(data), MiB):
                    await ex.send_body(view[pos : pos + MiB])
                await ex.send_body(b"", end=True)

            sender = asyncio.create_task(send_rest())
            h = hashlib.sha256(data[:1000])
            n = 1000
            while (chunk := await ex.next_chunk()) is not None:
                with chunk:
                    h.update(chunk.data)
                    n += chunk.data.nbytes
            await sender
            assert n == len(data)
            assert h.hexdigest() == hashlib.sha256(data).hexdigest()

    run(body)


def test_50_mib_upload_and_download() -> None:
    """A 50 MiB body reaches receive() in several events, and 50 MiB go back out."""
    size = 50 * MiB
    data = os.urandom(MiB) * 50

    async def body() -> None:
        async with pool_of(APP) as pool:
            r = await fetch(pool, "/upload", "POST", data)
            got = r.json()
            assert got["length"] == size
            assert got["sha256"] == hashlib.sha256(data).hexdigest()
            assert got["events"] > 1
            ex = await pool.submit(head(f"/big?{size}"), b"")
            assert (await ex.response()).status == 200
            h = hashlib.sha256()
            n = 0
            while (chunk := await ex.next_chunk()) is not None:
                with chunk:
                    h.update(chunk.data)
                    n += chunk.data.nbytes
            assert n == size
            assert h.hexdigest() == hashlib.sha256(PATTERN * 50).hexdigest()

    run(body)


# --------------------------------------------------------------------------- disconnect, errors


def test_cancel_delivers_http_disconnect() -> None:
    """When the front cancels an exchange, the application's receive() returns
    http.disconnect; its later sends are dropped without an error, and the worker tells the
    front it is done with the request."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            ex = await pool.submit(head("/hold?k1"), b"")
            assert (await ex.response()).status == 200
            first = await ex.next_chunk()
            assert first is not None
            with first:
                assert bytes(first.data) == b"first"
            ex.cancel()
            r = await fetch(pool, "/held?k1")
            assert r.json() == {
                "events": ["http.request", "http.disconnect"], "send_after_disconnect": "ok",
            }
            assert not pool.workers[0].abandoned  # the worker's CANCEL closed the request

    run(body)


def test_application_errors() -> None:
    """An exception before the response started is a 500; after, the response is aborted;
    returning without a response, or with an invalid header, is a 500.  The worker lives on."""

    async def body() -> None:
        async with pool_of(APP) as pool:
            pid = pool.workers[0].pid
            for target in ("/raise", "/noresponse", "/bad-header"):
                r = await fetch(pool, target)
                assert (r.status, r.body) == (500, b"Internal Server Error\n"), target
            ex = await pool.submit(head("/raise-after"), b"")
            assert (await ex.response()).status == 200
            with pytest.raises(ResponseAborted):
                while (chunk := await ex.next_chunk()) is not None:
                    chunk.release()
            assert (await fetch(pool, "/state")).status == 200
            assert pool.workers[0].pid == pid

    run(body)


# --------------------------------------------------------------------------- signals, peer


def test_term_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    """On SIGTERM the worker finishes the request it is serving, runs lifespan shutdown and
    exits 0."""
    marker = tmp_path / "marker"

    async def body() -> None:
        async with pool_of(APP, env={"ZEUS_TEST_MARKER": str(marker)}) as pool:
            w = pool.workers[0]
            ex = await pool.submit(head("/echo", "POST"), streaming=True)
            await ex.send_body(b"before TERM ")
            assert (await ex.response()).status == 200
            first = await ex.next_chunk()
            assert first is not None
            first.release()
            os.kill(w.pid, signal.SIGTERM)
            await ex.send_body(b"after TERM", end=True)
            rest = await read_reply(ex)
            assert rest.body == b"after TERM"
            await wait_until(lambda: w.state is WState.DEAD)
            assert w.process.returncode == 0
            assert marker.read_text() == "startup\nshutdown\n"

    run(body)


def test_front_gone_exits_peer_lost() -> None:
    """A serving worker whose front closes the channel exits with PEER_LOST."""
    region = Region.create(4 << 20, 64)
    try:
        proc = subprocess.Popen(
            worker_argv(APP, "asgi"), pass_fds=region.pass_fds,
            env={"PYTHONPATH": ROOT, **region.child_env()},
        )
        try:
            front = Channel(region, peer_pid=proc.pid)
            front.send(7, encode_request_head(head("/state")), Kind.REQUEST_HEAD, Flag.END)
            with front.recv(timeout=20) as msg:
                assert (msg.id, msg.kind) == (7, Kind.RESPONSE_HEAD)
                assert decode_response_head(msg.data).status == 200
            with front.recv(timeout=20) as msg:
                assert (msg.id, msg.kind, msg.end) == (7, Kind.RESPONSE_BODY, True)
            front.close()
            assert proc.wait(timeout=30) == WorkerExit.PEER_LOST
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        region.close()


# --------------------------------------------------------------------------- FastAPI


FASTAPI_CASES: list[tuple[str, str, bytes, list[tuple[bytes, bytes]]]] = [
    ("GET", "/items/42?q=zeus", b"", []),
    ("GET", "/items/notanumber", b"", []),
    ("POST", "/items", b'{"name": "hammer", "price": 9.5, "tags": ["tool"]}',
     [(b"content-type", b"application/json")]),
    ("POST", "/items", b'{"name": "hammer"}', [(b"content-type", b"application/json")]),
    ("GET", "/greeting", b"", []),
    ("GET", "/text", b"", []),
    ("GET", "/cookie", b"", []),
    ("GET", "/go", b"", []),
    ("GET", "/stream", b"", []),
    ("POST", "/echo", os.urandom(200_000), [(b"content-type", b"application/octet-stream")]),
    ("GET", "/missing", b"", []),
    ("DELETE", "/text", b"", []),
    ("GET", "/boom", b"", []),
]
COMPARED = ("content-type", "content-length", "location", "set-cookie", "allow")


@pytest.mark.filterwarnings("ignore:Using `httpx`")
def test_fastapi_app_answers_as_under_its_test_client() -> None:
    """A FastAPI application behind Zeus gives the status, body and headers its own
    TestClient gives (lifespan state included)."""
    from fastapi.testclient import TestClient

    expected = []
    with TestClient(create_fastapi_app(), raise_server_exceptions=False) as client:
        for method, target, data, headers in FASTAPI_CASES:
            resp = client.request(method, target, content=data or None,
                                  headers={k.decode(): v.decode() for k, v in headers},
                                  follow_redirects=False)
            expected.append((resp.status_code, resp.content,
                             {h: resp.headers.get_list(h) for h in COMPARED}))

    async def body() -> None:
        async with pool_of("tests.apps.asgi_apps:create_fastapi_app()") as pool:
            for (method, target, data, headers), want in zip(FASTAPI_CASES, expected,
                                                             strict=True):
                hdrs = [*headers, (b"content-length", str(len(data)).encode())] if data else \
                    headers
                r = await fetch(pool, target, method, data, hdrs)
                got = (r.status, r.body, {
                    h: [v.decode("latin-1") for k, v in r.headers if k == h.encode()]
                    for h in COMPARED
                })
                assert got == want, f"{method} {target}"

    run(body)
