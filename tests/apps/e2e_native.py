"""A native Zeus application for the end-to-end tests of the ``zeus`` command.

Paths:

- ``/hello``: a short fixed body.
- ``/method``: ``METHOD LENGTH`` of the request (any method; reads the whole body).
- ``/echo``: the request body back.
- ``/say?TEXT``: TEXT back (pipelining: tells responses apart).
- ``/pid``: the worker's pid.
- ``/hash``: streams the request body through sha256; answers ``HEXDIGEST LENGTH``.
  ``/hash?progress`` also keeps ``received-PID`` in ``$E2E_STATE_DIR`` up to date with the
  number of bytes read so far (a handshake for clients that pace their upload).
- ``/download?N``: N bytes of ``pattern`` (below), streamed, with a Content-Length.
- ``/chunks?N``: N small chunks from an iterable, no Content-Length (a chunked response).
- ``/sleep?S``: blocks S seconds; first writes ``sleeping-PID`` into ``$E2E_STATE_DIR``.
- ``/spin?S``: busy-loops S seconds (a request that overruns ``--timeout``).
- ``/drip?N``: ``respond()`` and then N chunks 20 ms apart; when the client is gone, writes
  ``disconnected-PID`` into ``$E2E_STATE_DIR`` (the worker saw ``ClientDisconnected``).
- ``/raise``: an exception in the handler.

The state directory is how a test observes what happened inside a worker without sleeping.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from zeus import ClientDisconnected, Request, Response

BLOCK = 1 << 20


def pattern(total: int) -> Iterator[bytes]:
    """The deterministic bytes ``/download`` sends: 1 MiB blocks, each stamped with its index
    so that a lost, repeated or reordered block changes the hash."""
    base = bytes(range(256)) * (BLOCK // 256)
    index = 0
    sent = 0
    while sent < total:
        n = min(BLOCK, total - sent)
        yield (index.to_bytes(8, "big") + base[8:])[:n]
        index += 1
        sent += n


def _mark(name: str, text: str = "") -> None:
    where = os.environ.get("E2E_STATE_DIR")
    if where:
        path = Path(where, name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(path)  # appears complete or not at all


def app(req: Request) -> Response | None:
    """Dispatch on the path."""
    path, query = req.path, req.query
    if path == "/hello":
        return Response(200, [("content-type", "text/plain")], b"Hello from Zeus!\n")
    if path == "/method":
        return Response(200, [], f"{req.method} {len(req.body)}".encode())
    if path == "/echo":
        return Response(200, [("content-type", "application/octet-stream")], bytes(req.body))
    if path == "/say":
        return Response(200, [], query.encode())
    if path == "/pid":
        return Response(200, [], str(os.getpid()).encode())
    if path == "/env":  # /env?NAME: the worker's environment variable NAME ("-" if unset)
        return Response(200, [], os.environ.get(query, "-").encode())
    if path == "/hash":
        digest = hashlib.sha256()
        size = 0
        for chunk in req.stream.chunks():
            digest.update(chunk)
            size += chunk.nbytes
            if query == "progress":
                _mark(f"received-{os.getpid()}", str(size))
        return Response(200, [], f"{digest.hexdigest()} {size}".encode())
    if path == "/download":
        total = int(query)
        return Response(200, [("content-length", str(total))], pattern(total))
    if path == "/chunks":
        return Response(200, [], (b"chunk %d\n" % i for i in range(int(query or "5"))))
    if path == "/sleep":
        _mark(f"sleeping-{os.getpid()}")
        time.sleep(float(query or "1"))
        return Response(200, [], b"slept")
    if path == "/spin":
        end = time.monotonic() + float(query or "1")
        while time.monotonic() < end:
            pass
        return Response(200, [], b"spun")
    if path == "/drip":
        out = req.respond(200, [(b"content-type", b"text/plain")])
        try:
            for i in range(int(query or "500")):
                out.write(b"drop %d\n" % i)
                time.sleep(0.02)
        except ClientDisconnected:
            _mark(f"disconnected-{os.getpid()}")
            raise
        out.close()
        return None
    if path == "/raise":
        raise RuntimeError("the application failed on purpose: SECRET-DETAIL")
    return Response(404, [], b"not found\n")
