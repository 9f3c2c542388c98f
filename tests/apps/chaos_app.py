"""A native Zeus application for the reliability suites (``reliability/``, ``tests/reliability``).

Paths:

- ``/hello``: a short fixed body.
- ``/size?N``: N bytes (default 1024, at most 16 MiB), from one preallocated buffer.
- ``/echo``: the request body back (any method; POST in the suites).
- ``/pid``: the worker's pid.
- ``/sleep?S``: sleeps S seconds (default 0.1), then answers ``slept``: a request in flight.
- ``/segv``: a real SIGSEGV inside the application (ctypes reads address 0).
- ``/hang``: sleeps forever (a request that overruns ``--timeout``).
- ``/bomb``: allocates and touches 16 MiB blocks without bound (``--memory-limit`` ends it).

Every other path is a 404.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time

from zeus import Request, Response

_BLOCK = 16 << 20
_MAX_SIZE = 16 << 20
_DATA = memoryview(bytes(range(256)) * (_MAX_SIZE // 256))
_HELLO = b"Hello from Zeus!\n"


def _size(query: str) -> int:
    try:
        return max(0, min(_MAX_SIZE, int(query or "1024")))
    except ValueError:
        return 1024


def app(req: Request) -> Response:
    """Dispatch on the path."""
    path = req.path
    if path == "/hello":
        return Response(200, [("content-type", "text/plain")], _HELLO)
    if path == "/size":
        return Response(200, [("content-type", "application/octet-stream")],
                        _DATA[: _size(req.query)])
    if path == "/echo":
        return Response(200, [("content-type", "application/octet-stream")], bytes(req.body))
    if path == "/pid":
        return Response(200, [], str(os.getpid()).encode())
    if path == "/sleep":
        with contextlib.suppress(ValueError):
            time.sleep(min(60.0, max(0.0, float(req.query or "0.1"))))
        return Response(200, [], b"slept")
    if path == "/segv":
        ctypes.string_at(0)  # a real SIGSEGV: the process dies here
    if path == "/hang":
        threading.Event().wait()  # never set: only the request timeout ends this
    if path == "/bomb":
        hoard = []
        while True:  # RLIMIT_AS -> MemoryError -> the worker exits; cgroup -> OOM kill
            block = bytearray(_BLOCK)
            block[:: 4096] = b"x" * (_BLOCK // 4096)  # touch every page: real RSS
            hoard.append(block)
    return Response(404, [], b"not found\n")
