"""ASGI applications for the adapter tests (``tests/xproc/test_pool_asgi.py``).

``app`` speaks lifespan (startup stores ``boot`` in the lifespan state and appends "startup" to
the file named by ``$ZEUS_TEST_MARKER``; shutdown appends "shutdown") and dispatches on the path:

/scope[/...]        the scope as JSON (bytes as latin-1 text)
/state              the lifespan state this request's scope carries
/gather?KEY&N       waits until N requests with the same KEY are in flight, then answers
/echo               streams each body chunk straight back as it arrives
/upload             sha256 and length of the body, and how many http.request events it took
/big?N              N bytes of a repeating pattern in 1 MiB chunks
/hold?KEY           sends a first chunk, then waits for http.disconnect; /held?KEY reports
                    (after the disconnect) what happened, including a send after it
/raise              raises before responding: 500
/raise-after        raises after the first chunk: the response is aborted
/noresponse         returns without responding: 500
/bad-header         a header value with a newline: 500, not a broken channel

``failing_app`` reports lifespan.startup.failed; ``raising_startup_app`` raises during startup;
``no_lifespan_app`` refuses the lifespan scope; ``create_fastapi_app()`` builds a small FastAPI
application.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PATTERN = bytes(range(256)) * 4096  # 1 MiB
_gathered: dict[str, int] = {}
_gathering: dict[str, asyncio.Event] = {}
_held: dict[str, dict[str, Any]] = {}
_held_done: dict[str, asyncio.Event] = {}


def _event(table: dict[str, asyncio.Event], key: str) -> asyncio.Event:
    if key not in table:
        table[key] = asyncio.Event()
    return table[key]


def _mark(line: str) -> None:
    marker = os.environ.get("ZEUS_TEST_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(line + "\n")


async def _plain(send: Send, status: int, body: bytes,
                 ctype: bytes = b"text/plain; charset=utf-8") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", ctype), (b"content-length", str(len(body)).encode()),
    ]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, obj: object) -> None:
    await _plain(send, 200, json.dumps(obj, sort_keys=True).encode(), b"application/json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        event = await receive()
        assert event["type"] == "http.request", event
        yield event["body"]
        if not event.get("more_body", False):
            return


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            scope["state"]["boot"] = f"booted in {os.getpid()}"
            _mark("startup")
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            _mark("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Dispatch on the path (see the module docstring)."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    path = scope["path"]
    query = scope["query_string"].decode()
    if path == "/scope" or path.startswith("/scope/"):
        await _json(send, _jsonable(scope))
    elif path == "/state":
        await _json(send, scope["state"])
    elif path == "/gather":
        key, _, n = query.partition("&")
        _gathered[key] = _gathered.get(key, 0) + 1
        if _gathered[key] == int(n):
            _event(_gathering, key).set()
        await _event(_gathering, key).wait()
        await _json(send, {"in_flight": _gathered[key], "pid": os.getpid()})
    elif path == "/echo":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        async for chunk in _body(receive):
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/upload":
        h = hashlib.sha256()
        length = events = 0
        async for chunk in _body(receive):
            h.update(chunk)
            length += len(chunk)
            events += 1
        await _json(send, {"sha256": h.hexdigest(), "length": length, "events": events})
    elif path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        n = int(query)
        while n > 0:
            chunk = PATTERN[: min(n, len(PATTERN))]
            n -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": n > 0})
    elif path == "/hold":
        await _hold(query, receive, send)
    elif path == "/held":
        await asyncio.wait_for(_event(_held_done, query).wait(), 10)
        await _json(send, _held[query])
    elif path == "/raise":
        raise RuntimeError("the application failed on purpose")
    elif path == "/raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("failed midway")
    elif path == "/noresponse":
        return
    elif path == "/bad-header":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-bad", b"line\r\nbreak")]})
        await send({"type": "http.response.body", "body": b"never"})
    else:
        await _plain(send, 404, b"not found\n")


async def _hold(key: str, receive: Receive, send: Send) -> None:
    """Start a response, wait for the client to leave, then try to send more."""
    record: dict[str, Any] = {"events": []}
    _held[key] = record
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    while True:
        event = await receive()
        record["events"].append(event["type"])
        if event["type"] == "http.disconnect":
            break
    try:
        await send({"type": "http.response.body", "body": b"after", "more_body": False})
        record["send_after_disconnect"] = "ok"
    except Exception as exc:
        record["send_after_disconnect"] = repr(exc)
    _event(_held_done, key).set()


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Its lifespan startup reports failure."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await _plain(send, 200, b"should never serve\n")


async def raising_startup_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Its lifespan startup raises after receiving lifespan.startup."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("configuration missing")
    await _plain(send, 200, b"should never serve\n")


async def no_lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An application that knows only HTTP (like many hand-written ones)."""
    assert scope["type"] == "http"
    await _plain(send, 200, b"served without lifespan\n")


# ----------------------------------------------------------------------- FastAPI


def create_fastapi_app() -> Any:
    """A small FastAPI application (built on demand: importing FastAPI takes a second)."""
    from fastapi import FastAPI, Request, Response
    from fastapi.responses import PlainTextResponse, RedirectResponse, StreamingResponse
    from pydantic import BaseModel

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello from lifespan"}

    api = FastAPI(lifespan=lifespan)

    class Item(BaseModel):
        name: str
        price: float
        tags: list[str] = []

    @api.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @api.post("/items")
    async def create_item(item: Item) -> dict[str, Any]:
        return {"item": item.model_dump(), "total": item.price * 2}

    @api.get("/greeting")
    async def greeting(request: Request) -> dict[str, Any]:
        return {"greeting": request.state.greeting}

    @api.get("/text", response_class=PlainTextResponse)
    async def text() -> str:
        return "plain text"

    @api.get("/cookie")
    async def cookie(response: Response) -> dict[str, bool]:
        response.set_cookie("session", "abc123", httponly=True)
        return {"ok": True}

    @api.get("/go")
    async def go() -> RedirectResponse:
        return RedirectResponse("/text")

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        def lines() -> Iterator[bytes]:
            for i in range(5):
                yield f"line {i}\n".encode()

        return StreamingResponse(lines(), media_type="text/plain")

    @api.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    @api.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a FastAPI endpoint failed")

    return api
