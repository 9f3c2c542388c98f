"""A worker program for ``zeus run``: any program that calls ``zeus.Worker.connect()``.

    zeus run --workers 2 -- python examples/my_worker.py

Zeus starts this program once per worker and hands it a shared-memory channel; ``serve``
then calls ``handler`` once per request.
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

from zeus import Request, Response, Worker

TEXT = [("content-type", "text/plain; charset=utf-8")]
JSON = [("content-type", "application/json")]


def handler(req: Request) -> Response:
    """Route one request."""
    if req.path == "/" and req.method in ("GET", "HEAD"):
        return Response(200, TEXT, b"Hello from a zeus run worker!\n")
    if req.path == "/pid" and req.method == "GET":
        return Response(200, TEXT, str(os.getpid()).encode())
    if req.path == "/query" and req.method == "GET":
        params = parse_qs(req.query, keep_blank_values=True)
        return Response(200, JSON, json.dumps(params, sort_keys=True).encode())
    if req.path == "/echo" and req.method == "POST":
        body = bytes(req.body)
        ctype = req.header("content-type", "application/octet-stream") or ""
        return Response(200, [("content-type", ctype)], body)
    return Response(404, TEXT, b"Not Found\n")


def main() -> None:
    Worker.connect().serve(handler)


if __name__ == "__main__":
    main()
