"""What every reliability suite needs: run ``zeus serve`` as a subprocess, look at its processes
through ``/proc``, and drive it with a load generator that classifies every request's outcome.

Theory of operation
-------------------
``Zeus`` starts ``zeus serve`` on port 0 (the port is read from its "listening on" log line) and
knows its workers as the live children of the front, "ready" once their ready line is logged.

``Load`` is an asyncio (uvloop) HTTP/1.1 client with ``connections`` keep-alive connections,
each sending one request at a time.  Unlike wrk it tells failures apart, per request:

* ``200``, ``502``, ``504``...: a complete response with that status;
* ``reset``: the connection was reset (ECONNRESET) while a request was outstanding;
* ``closed``: the server closed the connection (clean EOF) before any byte of the response;
* ``cut``: the connection ended in the middle of a response;
* ``refused``: a new connection was refused (nothing listens any more);
* ``timeout``: no complete response within ``request_timeout``.

A connection that ends between requests is not a failure (keep-alive may close); the next
request opens a new one.  Successes are also counted per 100 ms, for throughput over time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import httptools

ROOT: Final = Path(__file__).resolve().parents[1]
ZEUS: Final = ROOT / ".venv" / "bin" / "zeus"
APP: Final = "tests.apps.chaos_app:app"
BUCKET: Final = 0.1  # seconds per throughput bucket

_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
_READY = re.compile(r"worker \d+ \(pid (\d+)\) ready")


def log(msg: str) -> None:
    """Progress on stderr, timestamped."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted``; return the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------------- /proc


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (field 3 onwards), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int, *, zombies: bool = False) -> set[int]:
    """Child processes of ``pid``: the live ones, or with ``zombies`` only the zombies."""
    try:  # one read (CONFIG_PROC_CHILDREN) rather than a scan of /proc: the monitors poll it
        listed = [int(p) for t in os.listdir(f"/proc/{pid}/task")
                  for p in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        listed = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    out = set()
    for child in listed:
        st = _stat(child)
        if st is not None and st[1] == str(pid) and (st[0] == "Z") == zombies:
            out.add(child)
    return out


def live(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def zombie_count() -> int:
    """Zombie processes on the whole machine."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            count += st is not None and st[0] == "Z"
    return count


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon: private memory, where a leak shows; RssShmem: the
    touched pages of the shared regions, bounded by their size) of ``pid`` in KiB."""
    out = {"VmRSS": 0, "RssAnon": 0, "RssShmem": 0}
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0])
    return out


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if it is gone)."""
    return memory_kib(pid)["VmRSS"]


def anon_kib(pid: int) -> int:
    """RssAnon of ``pid`` in KiB: its private memory (0 if it is gone)."""
    return memory_kib(pid)["RssAnon"]


def fds(pid: int) -> list[str]:
    """What the open descriptors of ``pid`` point at (readlink of /proc/PID/fd/*)."""
    out = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


def memfds(pid: int) -> int:
    """Open memfd descriptors of ``pid`` (one per worker region in the front)."""
    return sum(1 for target in fds(pid) if target.startswith("/memfd:"))


# ------------------------------------------------------------------------ the server


class Zeus:
    """One ``zeus serve`` subprocess on a port the kernel picked."""

    def __init__(self, *options: str, workers: int = 4, app: str = APP,
                 log_path: Path | None = None) -> None:
        self.log_path = log_path or Path(f"/tmp/zeus-reliability-{os.getpid()}-"
                                         f"{random.randrange(1 << 30)}.log")
        self.argv = [str(ZEUS), "serve", app, "--bind", "127.0.0.1:0", "--workers",
                     str(workers), *options]
        env = {**os.environ, "ZEUS_ALLOW_ROOT": "1"}
        env.pop("PYTHONPATH", None)
        self.workers_wanted = workers
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.port = 0
        self.seen: set[int] = set()
        try:
            wait_until(self._listening, 30, "zeus to listen")
            self.wait_ready()
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"zeus exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        m = _LISTENING.search(self.log())
        if m:
            self.port = int(m.group(1))
        return bool(m)

    def workers(self) -> set[int]:
        """Live worker pids."""
        pids = children(self.pid)
        self.seen |= pids
        return pids

    def ready_workers(self) -> set[int]:
        """Live workers that have logged that they are ready."""
        return self.workers() & {int(p) for p in _READY.findall(self.log())}

    def wait_ready(self, timeout: float = 30) -> set[int]:
        """Wait until exactly the wanted number of workers are alive and ready."""
        n = self.workers_wanted
        wait_until(lambda: len(self.ready_workers()) == n == len(self.workers()), timeout,
                   f"{n} ready workers")
        return self.ready_workers()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the front, wait for it, check that no worker outlives it; its exit status."""
        self.workers()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"zeus did not exit {timeout}s after signal {sig}") from None
        finally:
            self._log.close()
        wait_until(lambda: not any(live(p) for p in self.seen), 10,
                   "the workers to exit with the front")
        return rc

    def kill(self) -> None:
        """Last resort: SIGKILL the front and every worker it had."""
        for pid in self.seen | children(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> Zeus:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


# ----------------------------------------------------------------------- the client


def request_bytes(method: str, target: str, body: bytes = b"", *, close: bool = False) -> bytes:
    """A complete HTTP/1.1 request."""
    head = f"{method} {target} HTTP/1.1\r\nHost: reliability\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode() + body


@dataclass
class Tally:
    """Outcomes of one kind of request, and its successes over time."""

    outcomes: Counter[str] = field(default_factory=Counter)
    buckets: Counter[int] = field(default_factory=Counter)  # successes per BUCKET since start
    latencies: list[float] = field(default_factory=list)  # seconds, when asked for
    events: list[tuple[float, float, str]] = field(default_factory=list)  # sent, done, outcome

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def failures(self, ok: Sequence[str] = ("200",)) -> Counter[str]:
        return Counter({k: v for k, v in self.outcomes.items() if k not in ok})


class _Connection(asyncio.Protocol):
    """One client connection: one request at a time, the response parsed by llhttp."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[str] | None = None
        self.got_bytes = False
        self.keep_alive = True
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(f"bad-response:{exc}")
            self.close()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self._finish(str(self.parser.get_status_code()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if isinstance(exc, ConnectionResetError):
            self._finish("reset")
        elif self.got_bytes:
            self._finish("cut")
        else:
            self._finish("closed" if exc is None else f"error:{type(exc).__name__}")

    def _finish(self, outcome: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(outcome)

    def send(self, data: bytes) -> asyncio.Future[str] | None:
        """Send a request; its outcome's future, or None if the connection was gone already
        (closed between requests, before ``connection_lost`` ran: nothing was sent)."""
        assert self.transport is not None
        self.got_bytes = False
        try:
            self.transport.write(data)
        except RuntimeError:  # uvloop: "the handler is closed"
            return None
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


Mix = Callable[[random.Random], tuple[str, bytes]]
"""Picks the next request: (kind, request bytes)."""


def constant(kind: str, data: bytes) -> Mix:
    return lambda rng: (kind, data)


class Load:
    """``connections`` clients sending requests from ``mix`` back to back until stopped."""

    def __init__(self, port: int, mix: Mix, *, connections: int = 16,
                 request_timeout: float = 30.0, latencies: bool = False,
                 events: bool = False, keep_alive: bool = True, seed: int = 1) -> None:
        self.port = port
        self.mix = mix
        self.connections = connections
        self.request_timeout = request_timeout
        self.record_latency = latencies
        self.record_events = events
        self.keep_alive = keep_alive
        self.rng = random.Random(seed)
        self.tallies: dict[str, Tally] = {}
        self.start = time.monotonic()
        self.stopping = False
        self.refused = 0
        self._tasks: list[asyncio.Task[None]] = []

    def tally(self, kind: str) -> Tally:
        t = self.tallies.get(kind)
        if t is None:
            t = self.tallies[kind] = Tally()
        return t

    def run(self) -> None:
        """Start the clients (call from inside the running loop)."""
        self.start = time.monotonic()
        for i in range(self.connections):
            self._tasks.append(asyncio.ensure_future(self._client(i)))

    async def stop(self) -> None:
        """Let each client finish the request it is waiting for, then stop."""
        self.stopping = True
        await asyncio.gather(*self._tasks)

    async def _connect(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, "127.0.0.1", self.port), 10)
        except ConnectionRefusedError:
            self.refused += 1
            await asyncio.sleep(0.01)  # back off: nothing listens
            return None
        except (TimeoutError, OSError) as exc:
            self.tally("connect").outcomes[f"connect-error:{type(exc).__name__}"] += 1
            await asyncio.sleep(0.01)
            return None
        return conn

    async def _client(self, index: int) -> None:
        conn: _Connection | None = None
        loop = asyncio.get_running_loop()
        while not self.stopping:
            if conn is None or conn.lost or conn.closing():
                # Ended between requests (keep-alive close): not a failure, nothing was sent.
                conn = await self._connect()
                if conn is None:
                    continue
            kind, data = self.mix(self.rng)
            if not self.keep_alive:
                data = data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            sent = loop.time()
            waiter = conn.send(data)
            if waiter is None:
                conn = None
                continue
            try:
                outcome = await asyncio.wait_for(waiter, self.request_timeout)
            except TimeoutError:
                outcome = "timeout"
            done = loop.time()
            t = self.tally(kind)
            t.outcomes[outcome] += 1
            if outcome == "200":
                t.buckets[int((done - self.start) / BUCKET)] += 1
                if self.record_latency:
                    t.latencies.append(done - sent)
            if self.record_events:
                t.events.append((sent, done, outcome))
            if not outcome.isdigit() or not conn.keep_alive or not self.keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------ the figures

    def outcomes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for t in self.tallies.values():
            total += t.outcomes
        return total

    def rate(self, since: float, until: float, kind: str | None = None) -> float:
        """Successful requests per second between two offsets from the start."""
        lo, hi = int(since / BUCKET), int(until / BUCKET)
        tallies = [self.tallies[kind]] if kind in self.tallies else (
            [] if kind else list(self.tallies.values()))
        n = sum(t.buckets.get(b, 0) for t in tallies for b in range(lo, hi))
        return n / max(BUCKET, (hi - lo) * BUCKET)

    def windows(self, since: float, until: float, width: float = 1.0) -> list[float]:
        """Successful requests per second in each ``width``-second window."""
        out = []
        t = since
        while t + width <= until + 1e-9:
            out.append(self.rate(t, t + width))
            t += width
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank), 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: the client must not be the bottleneck."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


class Verdict(Protocol):
    """A scenario's result: a dataclass whose ``broken`` lists the invariants it broke."""

    broken: list[str]


_V = TypeVar("_V", bound=Verdict)


def run_scenarios(scenarios: Coroutine[Any, Any, list[_V]], render: Callable[[list[_V]], str],
                  json_path: Path | None) -> int:
    """Run a script's scenarios on a fresh loop, print their table, write them as JSON when
    asked; the exit status is 1 when any scenario broke an invariant."""
    loop = new_loop()
    try:
        results = loop.run_until_complete(scenarios)
    finally:
        loop.close()
    print(render(results))
    if json_path:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))  # type: ignore[call-overload]
    return 1 if any(r.broken for r in results) else 0


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
