"""A native Zeus application that misbehaves on request, and worker programs that misbehave
on their own, for the supervisor tests (``tests/xproc/test_pool_*.py``).

As an application (``python -m zeus.worker tests.apps.misbehaving:app``), by path:

- ``/pid``: the worker's pid.
- ``/sleep?S``: sleeps S seconds (without burning CPU), then answers ``slept-PID``; first
  creates ``busy-PID`` in ``$MISBEHAVING_STATE`` when that is set, so a test knows the worker
  has taken the request.
- ``/burn``: a busy loop that never ends (CPU time limit, request timeout); with the query
  ``ignore-sigxcpu``, ignores SIGXCPU first (only the hard limit's SIGKILL ends it).
- ``/alloc``: allocates and touches 16 MiB blocks without bound (memory limits).
- ``/files``: opens ``/dev/null`` until that fails, closes them all, and answers
  ``EMFILE N`` (N descriptors opened) when the failure was EMFILE.
- ``/segv``: a real SIGSEGV (ctypes reads address 0).
- ``/exit?CODE``: ``os._exit(CODE)`` in the middle of the request.
- ``/answer-then-exit``: sends a whole response (``answer``), then ``os._exit(0)``.
- ``/raise``: an exception in the handler (the worker answers 500 and keeps serving).

With ``MISBEHAVING_BOOT=raise`` in its environment, importing this module raises (an
application that cannot boot); with ``MISBEHAVING_BROKEN_WHILE=PATH``, it raises while PATH
exists (a deployment that is broken, then fixed).

As a worker program (``python -m tests.apps.misbehaving MODE``):

- ``serve``: serve ``app`` like ``zeus run`` would.
- ``ignore-term``: ignore SIGTERM (SIG_IGN, and blocked so the worker's own handler never runs
  either), then serve ``app``: only SIGKILL ends it.
- ``exit-after-connect``: attach to the channel, then ``os._exit(1)`` (a crash loop).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import time
from pathlib import Path

from zeus import Request, Response, Worker

if os.environ.get("MISBEHAVING_BOOT") == "raise":
    raise RuntimeError("this application fails at import, on purpose")
_GATE = os.environ.get("MISBEHAVING_BROKEN_WHILE")
if _GATE and os.path.exists(_GATE):
    raise RuntimeError(f"this application fails at import while {_GATE} exists")

BLOCK = 16 << 20


def _mark_busy() -> None:
    state = os.environ.get("MISBEHAVING_STATE")
    if state:
        Path(state, f"busy-{os.getpid()}").touch()


def _open_until_failure() -> Response:
    held: list[int] = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        failure = exc.errno
    finally:
        for fd in held:
            os.close(fd)
    if failure == errno.EMFILE:
        return Response(200, [], f"EMFILE {len(held)}".encode())
    return Response(500, [], f"failed with {errno.errorcode.get(failure or 0)}".encode())


def app(req: Request) -> Response:
    """Dispatch on the path."""
    path, query = req.path, req.query
    if path == "/pid":
        return Response(200, [], str(os.getpid()).encode())
    if path == "/sleep":
        _mark_busy()
        time.sleep(float(query or "1"))
        return Response(200, [], f"slept-{os.getpid()}".encode())
    if path == "/burn":
        if query == "ignore-sigxcpu":
            signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass
    if path == "/alloc":
        hoard = []
        while True:
            hoard.append(b"\x01" * BLOCK)  # touched, so it counts as resident too
    if path == "/files":
        return _open_until_failure()
    if path == "/segv":
        ctypes.string_at(0)
    if path == "/exit":
        os._exit(int(query or "13"))
    if path == "/answer-then-exit":
        writer = req.respond(200, [(b"content-length", b"6")])
        writer.write(b"answer")
        writer.close()
        os._exit(0)
    if path == "/raise":
        raise RuntimeError("the application failed on purpose")
    return Response(404, [], b"not found\n")


def main(mode: str) -> None:
    """Run as a worker program in ``mode`` (see the module docstring)."""
    if mode == "serve":
        Worker.connect().serve(app)
    elif mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        Worker.connect().serve(app)
    elif mode == "exit-after-connect":
        Worker.connect()
        os._exit(1)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1])
