"""A small Flask application served by Zeus through its WSGI adapter.

    zeus serve examples.flask_app:app

Routes: ``/`` (plain text), ``/query`` (the query parameters as JSON), ``POST /echo`` (the
JSON body back), ``/large`` (2 MiB in one piece), ``/stream`` (a body streamed in chunks);
anything else is Flask's own 404.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, abort, jsonify, request

app = Flask(__name__)

LARGE_SIZE = (2 << 20) + 7  # not a multiple of any buffer size


def large_body(size: int = LARGE_SIZE) -> bytes:
    """Deterministic bytes: every byte value, repeated, then cut to ``size``."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def stream_chunks(count: int = 50) -> Iterator[bytes]:
    """Chunks of varying sizes, each starting with its number."""
    for i in range(count):
        yield f"chunk {i:03d} ".encode() + b"z" * (i * 997 % 8192) + b"\n"


@app.get("/")
def index() -> Response:
    return Response("Hello from Flask on Zeus!\n", mimetype="text/plain")


@app.get("/query")
def query() -> Response:
    return jsonify({key: request.args.getlist(key) for key in request.args})


@app.post("/echo")
def echo() -> Response:
    data = request.get_json(silent=True)
    if data is None:
        abort(400, "expected a JSON body")
    return jsonify({"echo": data, "length": request.content_length})


@app.get("/large")
def large() -> Response:
    return Response(large_body(), mimetype="application/octet-stream")


@app.get("/stream")
def stream() -> Response:
    return Response(stream_chunks(), mimetype="text/plain")
