"""A native Zeus handler that misbehaves on request, for supervisor tests.

Paths: /hello, /echo (body back), /pid, /sleep?SECONDS (busy-waits), /crash (os._exit 13),
/segv (a real SIGSEGV via ctypes), /hang (infinite loop), /raise (exception -> 500),
/alloc (allocates without bound), /big?N (N bytes of response), /stream?N (N chunks).
"""

from __future__ import annotations

import ctypes
import os
import time

from zeus import Request, Response


def app(req: Request) -> Response:
    """Dispatch on the path."""
    path, query = req.path, req.query
    if path == "/hello":
        return Response(200, [("content-type", "text/plain")], b"Hello from Zeus!\n")
    if path == "/echo":
        return Response(200, [("content-type", "application/octet-stream")], bytes(req.body))
    if path == "/pid":
        return Response(200, [], str(os.getpid()).encode())
    if path == "/sleep":
        end = time.monotonic() + float(query or "1")
        while time.monotonic() < end:
            pass
        return Response(200, [], b"slept")
    if path == "/crash":
        os._exit(13)
    if path == "/segv":
        ctypes.string_at(0)
    if path == "/hang":
        while True:
            pass
    if path == "/raise":
        raise RuntimeError("the application failed on purpose")
    if path == "/alloc":
        hoard = []
        while True:
            hoard.append(bytearray(16 << 20))
    if path == "/big":
        return Response(200, [], b"x" * int(query or "1048576"))
    if path == "/stream":
        return Response(200, [], (b"chunk%d\n" % i for i in range(int(query or "10"))))
    return Response(404, [], b"not found\n")
