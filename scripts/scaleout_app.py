"""The application the scale-out scenario serves behind nginx (``scripts/scaleout.py``).

    zeus serve scaleout_app:app --chdir scripts

Paths:

- ``/work?MS``: waits MS milliseconds (default 10), then answers ``ok PID``.  The wait keeps
  requests in flight, so a TERM always lands on work to drain.  Any method; a request body is
  read in full (a POST load exercises the non-idempotent case).
- anything else: ``ok PID`` at once.

When ``SCALEOUT_STATE_DIR`` is set, a request to ``/work`` holds the file ``busy-PID`` in it
while it runs (a worker runs one request at a time): the scenario waits for one before it
sends TERM, so it knows a request is in flight at that moment instead of hoping so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from zeus import Request, Response

_STATE = os.environ.get("SCALEOUT_STATE_DIR")


def app(req: Request) -> Response:
    """Answer ``ok PID`` after the requested wait."""
    size = len(req.body)
    body = f"ok {os.getpid()} {size}\n".encode()
    if req.path != "/work":
        return Response(200, [("content-type", "text/plain")], body)
    delay = float(req.query or "10") / 1000.0
    busy = Path(_STATE, f"busy-{os.getpid()}") if _STATE else None
    if busy is not None:
        busy.touch()
    try:
        time.sleep(delay)
    finally:
        if busy is not None:
            busy.unlink(missing_ok=True)
    return Response(200, [("content-type", "text/plain")], body)
