"""A worker that writes garbage into its own channel region hurts nobody else.

``zeus run -- python tests/apps/hostile_worker.py`` with three workers under load from
several clients; one worker is armed (``tests/apps/hostile_worker.py``) and, in the middle of a
request, writes a crafted bad value into its region.  The front must stay up, kill that worker
and log one line naming the bad value, start a replacement, and keep serving every other
client: the only failures allowed are clean 502s for the requests in flight on the hostile
worker (at most its concurrency plus its prefetch), never a reset, a 500 or a hang.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from zeus.pool.config import PREFETCH_MAX

from .helpers import FIGURES, ROOT, ZEUS, Hammer, Server, free_port, wait_until

HOSTILE_APP: Final = ROOT / "tests" / "apps" / "hostile_worker.py"
WORKERS: Final = 3
# Concurrency 1 + the deepest prefetch: what a dying worker may hold (a worker that broke the
# protocol gets no retry of the requests in its ring: nothing it says can be trusted).
IN_FLIGHT_MAX: Final = 1 + PREFETCH_MAX


class RunServer(Server):
    """``zeus run -- python tests/apps/hostile_worker.py`` (a worker program, not an app)."""

    def __init__(self, state_dir: Path, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.state_dir = state_dir
        self.log_path = log_path
        self.argv = [str(ZEUS), "run", "--bind", f"127.0.0.1:{self.port}", "--workers",
                     str(WORKERS), "--graceful-timeout", "5", *args, "--", sys.executable,
                     str(HOSTILE_APP)]
        env = {**os.environ, "HOSTILE_DIR": str(state_dir)}
        env.pop("PYTHONPATH", None)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.seen_workers: set[tuple[int, str]] = set()


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunServer]:
    """One server for the module: each test leaves it with all its workers ready."""
    where = tmp_path_factory.mktemp("zeus-hostile")
    state = where / "state"
    state.mkdir()
    server = RunServer(state, where / "zeus.log")
    try:
        server.wait_ready(WORKERS)
        yield server
    finally:
        if server.proc.poll() is None:
            rc = server.stop()
            print(server.log()[-6000:])  # shown on failure
            assert rc == 0, server.log()[-4000:]


def _arm(server: Server, spec: str) -> Path:
    arm = server.state_dir / "arm"
    tmp = arm.with_suffix(".tmp")
    tmp.write_text(spec)
    tmp.rename(arm)  # appears whole: a worker never reads half a spec
    return arm


def _attacker(server: Server) -> int:
    """The pid of the worker that took the arm file, once it has attacked."""
    found: list[Path] = []

    def look() -> bool:
        armed = [p for p in server.state_dir.glob("armed-*") if p.name not in _SEEN]
        found[:] = [server.state_dir / p.name.replace("armed", "attack") for p in armed]
        return bool(found) and found[0].exists()

    wait_until(look, 15, "a worker to attack")
    _SEEN.add(found[0].name.replace("attack", "armed"))
    return int(found[0].name.rsplit("-", 1)[1])


_SEEN: set[str] = set()  # arm files already taken (by earlier tests on the module's server)


def _broke_line(server: Server, pid: int) -> str | None:
    for line in server.log().splitlines():
        if f"(pid {pid}) broke the channel protocol" in line:
            return line
    return None


def _survive(server: RunServer, spec: str) -> tuple[int, str, list[int | str], int]:
    """Arm one worker with ``spec`` under load; return (attacker pid, the log line, the
    hammers' failures, requests served meanwhile)."""
    before = server.ready_workers()
    hammers = [Hammer(server), Hammer(server, keep_alive=True), Hammer(server, keep_alive=True)]
    for h in hammers:
        h.__enter__()
    try:
        wait_until(lambda: all(len(h.statuses) > 20 for h in hammers), 15, "load to start")
        _arm(server, spec)
        pid = _attacker(server)
        assert pid in before
        wait_until(lambda: _broke_line(server, pid) is not None, 15,
                   f"the front to log why it killed worker {pid}")
        wait_until(lambda: pid not in server.workers(), 15, f"worker {pid} to be killed")
        wait_until(lambda: len(server.ready_workers() - before) == 1
                   and len(server.ready_workers()) == WORKERS, 20, "a replacement worker")
        served = sum(len(h.statuses) for h in hammers)
        # Keep the load on a while after the replacement, through every worker.
        wait_until(lambda: sum(len(h.statuses) for h in hammers) > served + 50, 15,
                   "requests after the replacement")
    finally:
        for h in hammers:
            h.__exit__()
    line = _broke_line(server, pid)
    assert line is not None
    failures = [f for h in hammers for f in h.failures]
    return pid, line, failures, sum(len(h.statuses) for h in hammers)


# One of each family here; reliability/hostile.py runs every kind, many rounds each.
DETECTED: Final = [
    "slot-random", "slot-offset", "unknown-id", "stale-id", "bad-head", "head-huge",
    "tail-past-head", "freed-past-head",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", DETECTED)
def test_a_hostile_worker_is_killed_and_nobody_else_notices(
    hostile_server: RunServer, kind: str
) -> None:
    """The front kills the worker that wrote ``kind``, says why naming the bad value, replaces
    it, and every other request of the load succeeds (502 only for the victim's requests)."""
    pid, line, failures, total = _survive(hostile_server, f"{kind} 5")
    attack = (hostile_server.state_dir / f"attack-{pid}").read_text().split(" ", 1)
    assert attack[0] == kind
    value = attack[1].strip()
    if kind not in ("slot-random", "bad-head", "head-backwards"):
        assert value in line, (value, line)
    assert hostile_server.proc.poll() is None, "the front died"
    assert all(f == 502 for f in failures), failures
    assert len(failures) <= IN_FLIGHT_MAX, failures
    FIGURES[f"hostile worker ({kind})"] = (
        f"killed and replaced; {len(failures)} x 502 of {total} requests; log: "
        f"{line.split('protocol: ', 1)[-1][:80]}"
    )


@pytest.mark.timeout(60)
def test_harmless_scribbles_then_a_bad_slot(hostile_server: RunServer) -> None:
    """Scribbling over words the front never reads back (the header, its own counters and
    sleep word, the heartbeat) changes nothing; the bad slot that follows is caught."""
    _, line, failures, _ = _survive(
        hostile_server, "scribble-header,scribble-front-words,scribble-heartbeat,slot-kind 5"
    )
    assert re.search(r"kind \d+,", line), line
    assert all(f == 502 for f in failures) and len(failures) <= IN_FLIGHT_MAX, failures


@pytest.mark.timeout(60)
def test_a_worker_that_closes_its_channel_but_stays_is_killed(
    hostile_server: RunServer,
) -> None:
    """A worker that publishes CLOSED and keeps running is not left in the pool taking
    requests it will never answer: it is killed and replaced, the others serve on."""
    server = hostile_server
    before = server.ready_workers()
    with Hammer(server) as h1, Hammer(server, keep_alive=True) as h2:
        wait_until(lambda: len(h1.statuses) > 20, 15, "load to start")
        _arm(server, "closed-alive 5")
        pid = _attacker(server)
        wait_until(lambda: pid not in server.workers(), 15, f"worker {pid} to be killed")
        wait_until(lambda: len(server.ready_workers() - before) == 1
                   and len(server.ready_workers()) == WORKERS, 20, "a replacement worker")
        done = len(h1.statuses) + len(h2.statuses)
        wait_until(lambda: len(h1.statuses) + len(h2.statuses) > done + 50, 15,
                   "requests after the replacement")
    failures = h1.failures + h2.failures
    assert all(f == 502 for f in failures) and len(failures) <= IN_FLIGHT_MAX, failures
    line = _broke_line(server, pid)
    assert line is not None and "closed its channel but did not exit" in line, line


@pytest.mark.timeout(30)
@pytest.mark.parametrize("lengths", ["-5", "+5", "1_0", " 5", "0x5", "5,6", "6,5", "x,5",
                                     "7", "3", "99999999999999999999", ""])
def test_crafted_response_lengths_never_desync_the_client(
    hostile_server: RunServer, lengths: str
) -> None:
    """Content-Length values a worker made up: the client gets at most one, plain digits,
    matching the bytes that follow (or the connection closes); the request pipelined behind
    is answered on its own, never read out of the first response's body."""
    with hostile_server.conn() as c:
        c.send(b"GET /lengths?%s HTTP/1.1\r\nHost: x\r\n\r\nGET /pid HTTP/1.1\r\nHost: x\r\n\r\n"
               % lengths.replace(" ", "%20").encode())
        try:
            first = c.read_response()
        except EOFError:
            return  # announced more than it sent: the front closes, nothing is misframed
        length = first.header("content-length")
        assert first.header_count("content-length") <= 1, first.raw_head
        assert length is None or length.isdigit(), first.raw_head
        assert not (length is not None and first.chunked), first.raw_head
        assert first.body in (b"hello", b"hel"), first.body
        try:
            second = c.read_response()
        except (EOFError, ConnectionResetError):
            return  # closed after a response it could not frame: allowed
        assert second.status == 200 and second.body.isdigit(), (second.raw_head, second.body)
