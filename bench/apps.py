"""The applications ``bench/http.py`` serves: the same three endpoints in three interfaces.

* ``wsgi_app`` -- plain PEP 3333 (Zeus WSGI adapter, gunicorn, granian ``--interface wsgi``)
* ``asgi_app`` -- plain ASGI 3 (uvicorn, granian ``--interface asgi``)
* ``native_app`` -- a native Zeus handler (``zeus serve --interface native``)

Endpoints, identical in all three:

* ``GET /hello`` -- a 12-byte body, ``Hello world!``
* ``GET /1m`` -- a 1 MiB body, allocated once at import (no per-request allocation)
* ``POST /upload`` -- reads the whole request body in pieces, discards it, answers its length

No framework, no routing library: the point is the server's own cost per request.  The peers'
virtualenv has no ``zeus``, so the native handler's import is optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from zeus import Request, Response
except ImportError:  # the peers' venv: only native_app needs zeus, and it is never called there
    if not TYPE_CHECKING:
        Request = Response = None

HELLO = b"Hello world!"
assert len(HELLO) == 12
MIB = b"z" * (1 << 20)
_READ = 64 * 1024

_TEXT = "text/plain"
_OCTETS = "application/octet-stream"
_HELLO_LEN = str(len(HELLO))
_MIB_LEN = str(len(MIB))


# --------------------------------------------------------------------------------- WSGI


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """PEP 3333: /hello, /1m, POST /upload."""
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "GET")
    if path == "/hello":
        start_response("200 OK", [("Content-Type", _TEXT), ("Content-Length", _HELLO_LEN)])
        return [HELLO]
    if path == "/1m":
        start_response("200 OK", [("Content-Type", _OCTETS), ("Content-Length", _MIB_LEN)])
        return [MIB]
    if path == "/upload" and method == "POST":
        stream = environ["wsgi.input"]
        try:
            remaining = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            remaining = 0
        n = 0
        while remaining > 0:  # PEP 3333: never read past CONTENT_LENGTH
            chunk = stream.read(min(_READ, remaining))
            if not chunk:
                break
            n += len(chunk)
            remaining -= len(chunk)
        body = str(n).encode()
        start_response("200 OK", [("Content-Type", _TEXT), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Type", _TEXT), ("Content-Length", "10")])
    return [b"not found\n"]


# --------------------------------------------------------------------------------- ASGI

_A_HELLO = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", _TEXT.encode()), (b"content-length", _HELLO_LEN.encode())],
}
_A_MIB = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", _OCTETS.encode()), (b"content-length", _MIB_LEN.encode())],
}


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI 3: /hello, /1m, POST /upload (and the lifespan protocol, as a no-op)."""
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return
    path = scope["path"]
    if path == "/hello":
        await send(_A_HELLO)
        await send({"type": "http.response.body", "body": HELLO})
        return
    if path == "/1m":
        await send(_A_MIB)
        await send({"type": "http.response.body", "body": MIB})
        return
    if path == "/upload" and scope["method"] == "POST":
        n = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # http.disconnect
            n += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = str(n).encode()
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", _TEXT.encode()),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", _TEXT.encode()), (b"content-length", b"10")]})
    await send({"type": "http.response.body", "body": b"not found\n"})


# ------------------------------------------------------------------------- native Zeus

_N_HELLO = [("content-type", _TEXT), ("content-length", _HELLO_LEN)]
_N_MIB = [("content-type", _OCTETS), ("content-length", _MIB_LEN)]


def native_app(request: Request) -> Response:
    """A native Zeus handler: /hello, /1m, POST /upload."""
    path = request.path
    if path == "/hello":
        return Response(200, _N_HELLO, HELLO)
    if path == "/1m":
        return Response(200, _N_MIB, MIB)
    if path == "/upload" and request.method == "POST":
        n = 0
        for chunk in request.stream.chunks():  # zero-copy views into the arena, released in turn
            n += chunk.nbytes
        body = str(n).encode()
        return Response(200, [("content-type", _TEXT), ("content-length", str(len(body)))], body)
    return Response(404, [("content-type", _TEXT), ("content-length", "10")], b"not found\n")
