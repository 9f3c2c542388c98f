"""WSGI applications for the adapter tests (``tests/xproc/test_pool_wsgi.py``).

``app`` dispatches on the path:

/environ[/...]    the environ as JSON (values that are not text are shown by type name)
/upload?STEP      reads wsgi.input STEP bytes at a time; JSON: sha256, length, reads, largest
/lines            reads wsgi.input line by line (iteration, readline(limit), readlines(hint))
/big?N            N bytes of a repeating pattern, streamed in 1 MiB chunks (no Content-Length)
/write            the write() callable for part of the body, then an iterable for the rest
/exc-before       catches an error and restarts the response with exc_info (allowed)
/exc-after        sends a chunk, then calls start_response with exc_info (re-raised: aborted)
/closing?KEY      an iterable whose close() records KEY; /closed?KEY tells whether it ran
/closing-big?KEY  the same, streamed in several chunks (close() after the last one)
/file?PATH        wsgi.file_wrapper around an open file (read straight into the arena)
/file-iter?PATH   wsgi.file_wrapper around an object with read() only (iterated)
/file-cl?PATH&N   wsgi.file_wrapper with Content-Length N, shorter than the file
/raise            raises before start_response: 500
/raise-after      a generator that fails after its first chunk: the response is aborted
/lazy             a generator that calls start_response on its first iteration
/empty            200 with no body

``create_flask_app()`` builds a small Flask application, compared with Flask's own test client.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]

CLOSED: set[str] = set()
PATTERN = bytes(range(256)) * 4096  # 1 MiB


def pattern(n: int) -> Iterator[bytes]:
    """``n`` bytes of the repeating pattern, in 1 MiB chunks."""
    while n > 0:
        chunk = PATTERN[: min(n, len(PATTERN))]
        n -= len(chunk)
        yield chunk


def _json(start_response: StartResponse, obj: object, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(obj, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


class Closing:
    """An iterable whose close() is observable through /closed."""

    def __init__(self, key: str, chunks: list[bytes]) -> None:
        self.key = key
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        CLOSED.add(self.key)


class ReadOnly:
    """A file-like object with read() and close() only: file_wrapper must iterate it."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self.closed = True


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Dispatch on PATH_INFO (see the module docstring)."""
    path = environ["PATH_INFO"]
    query = environ["QUERY_STRING"]
    inp = environ["wsgi.input"]
    if path == "/environ" or path.startswith("/environ/"):
        shown = {k: v if isinstance(v, str | int | bool) or v is None else type(v).__name__
                 for k, v in environ.items()}
        shown["wsgi.version"] = list(environ["wsgi.version"])
        shown["wsgi.errors is stderr"] = environ["wsgi.errors"] is sys.stderr
        return _json(start_response, shown)
    if path == "/upload":
        step = int(query or "65536")
        h = hashlib.sha256()
        length = reads = largest = 0
        while data := inp.read(step):
            h.update(data)
            length += len(data)
            reads += 1
            largest = max(largest, len(data))
        return _json(start_response, {"sha256": h.hexdigest(), "length": length,
                                      "reads": reads, "largest": largest})
    if path == "/lines":
        first = inp.readline(5)
        rest_of_first = inp.readline()
        some = inp.readlines(10)
        others = list(inp)
        return _json(start_response, {
            "first": first.decode(), "rest_of_first": rest_of_first.decode(),
            "some": [x.decode() for x in some], "others": [x.decode() for x in others],
        })
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return pattern(int(query))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"twice, ")
        return [b"then ", b"returned"]
    if path == "/exc-before":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("failed before any body")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain"),
                                                       ("X-Recovered", "yes")], sys.exc_info())
        return [b"recovered\n"]
    if path == "/exc-after":
        return _exc_after(start_response)
    if path == "/closing":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return Closing(query, [b"clo", b"se"])
    if path == "/closing-big":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing(query, [b"a" * 1000, b"b" * 1000, b"c" * 1000])
    if path == "/closed":
        return _json(start_response, {"closed": query in CLOSED})
    if path == "/file":
        f = open(query, "rb")  # noqa: SIM115 -- closed by the server through file_wrapper
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 65536)  # type: ignore[no-any-return]
    if path == "/file-iter":
        with open(query, "rb") as f:
            data = f.read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](ReadOnly(data), 100_000)  # type: ignore[no-any-return]
    if path == "/file-cl":
        name, _, n = query.partition("&")
        f = open(name, "rb")  # noqa: SIM115
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", n)])
        return environ["wsgi.file_wrapper"](f)  # type: ignore[no-any-return]
    if path == "/raise":
        raise RuntimeError("the application failed on purpose")
    if path == "/raise-after":
        return _raise_after(start_response)
    if path == "/lazy":
        return _lazy(start_response)
    if path == "/empty":
        start_response("204 No Content", [("X-Empty", "1")])
        return []
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]


def _exc_after(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first chunk, "
    try:
        raise ValueError("failed after the headers went out")
    except ValueError:
        start_response("500 Internal Server Error", [], sys.exc_info())  # re-raises
    yield b"never sent"


def _raise_after(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial"
    raise RuntimeError("failed midway")


def _lazy(start_response: StartResponse) -> Iterator[bytes]:
    yield b""
    start_response("201 Created", [("Content-Type", "text/plain")])
    yield b""
    yield b"lazy"


# ----------------------------------------------------------------------- Flask


def create_flask_app() -> Any:
    """A small Flask application (built on demand, so the other apps start faster)."""
    from flask import Flask, jsonify, make_response, redirect, request, stream_with_context

    flask_app = Flask("zeus_test_flask")

    @flask_app.route("/hello")
    def hello() -> str:
        return "Hello from Flask!"

    @flask_app.route("/json/<int:item>")
    def json_item(item: int) -> Any:
        return jsonify(item=item, q=request.args.get("q"), path=request.path,
                       agent=request.headers.get("User-Agent"))

    @flask_app.route("/form", methods=["POST"])
    def form() -> Any:
        return jsonify(form=request.form.to_dict(), length=request.content_length)

    @flask_app.route("/upload", methods=["POST"])
    def upload() -> Any:
        f = request.files["file"]
        data = f.read()
        return jsonify(name=f.filename, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    @flask_app.route("/cookie")
    def cookie() -> Any:
        resp = make_response("cookie set")
        resp.set_cookie("session", "abc123", httponly=True)
        resp.set_cookie("theme", "dark")
        return resp

    @flask_app.route("/go")
    def go() -> Any:
        return redirect("/hello")

    @flask_app.route("/stream")
    def stream() -> Any:
        def generate() -> Iterator[str]:
            for i in range(5):
                yield f"line {i}\n"

        return flask_app.response_class(stream_with_context(generate()), mimetype="text/plain")

    @flask_app.route("/fail")
    def fail() -> str:
        raise RuntimeError("a Flask view failed")

    return flask_app
