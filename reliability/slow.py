"""Slow clients: 500 slowloris connections and 50 slow readers beside a fast client.

``zeus serve`` runs 4 workers of ``tests.apps.chaos_app``.  A fast client (one keep-alive
connection, blocking sockets, in the main thread) sends GET /hello back to back for
``--baseline`` seconds alone, then for ``--duration`` seconds while, from an asyncio loop in
another thread:

* ``--slowloris`` connections each send a request head one header line every ``--drip``
  seconds, never ending it; when zeus closes one (408 after ``--header-timeout``), it opens a
  new one, so that many are always open;
* ``--readers`` connections each GET /size?``--reader-size`` with a 16 KiB receive buffer and
  read it 16 KiB every 50 ms (about 320 KB/s), then ask again.

A thread samples the front's RSS every 20 ms.  Figures: the fast client's latency (median, p99,
max) alone and under the slow clients, the front's RSS (VmRSS and its anonymous part) before and
at its maximum, the slowloris connections open and closed by zeus, the bytes the readers got.

Invariants (exit status 1 if one breaks): every fast request gets a 200; its p99 under the slow
clients stays below ``--p99-limit`` ms; the front's anonymous RSS grows by at most
``--rss-limit`` MiB (50 readers x the 256 KiB write buffer bound is 12.5 MiB); the slowloris
connections really were open (at least 90 % of them at the end).

    .venv/bin/python reliability/slow.py             # 500 + 50, 30 s
    .venv/bin/python reliability/slow.py --quick     # 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reliability.common import (
    Zeus,
    log,
    memory_kib,
    new_loop,
    percentile,
    raise_fd_limit,
    table,
)

WORKERS = 4


@dataclass
class Result:
    slowloris: int = 0
    readers: int = 0
    fast_requests_alone: int = 0
    fast_requests_loaded: int = 0
    fast_failures: dict[str, int] = field(default_factory=dict)
    median_ms_alone: float = 0.0
    p99_ms_alone: float = 0.0
    median_ms_loaded: float = 0.0
    p99_ms_loaded: float = 0.0
    max_ms_loaded: float = 0.0
    slowloris_open_at_end: int = 0
    slowloris_closed_by_zeus: int = 0
    reader_mib: float = 0.0
    reader_responses: int = 0
    reader_errors: dict[str, int] = field(default_factory=dict)
    front_rss_mib_before: float = 0.0
    front_rss_mib_max: float = 0.0
    front_anon_mib_before: float = 0.0
    front_anon_mib_max: float = 0.0
    broken: list[str] = field(default_factory=list)


class SlowClients:
    """The slowloris connections and slow readers, on their own loop in a thread."""

    def __init__(self, port: int, slowloris: int, readers: int, drip: float,
                 reader_size: int) -> None:
        self.port = port
        self.slowloris = slowloris
        self.readers = readers
        self.drip = drip
        self.reader_size = reader_size
        self.open = 0
        self.closed_by_server = 0
        self.read_bytes = 0
        self.responses = 0
        self.errors: dict[str, int] = {}
        self.loop = new_loop()
        self.stopping = False
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._thread, daemon=True)

    def _thread(self) -> None:
        self.loop.run_until_complete(self._main())
        self.loop.close()

    async def _main(self) -> None:
        tasks = [asyncio.ensure_future(self._loris(i)) for i in range(self.slowloris)]
        tasks += [asyncio.ensure_future(self._reader(i)) for i in range(self.readers)]
        self.started.set()
        while not self.stopping:
            await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def _loris(self, index: int) -> None:
        await asyncio.sleep(index * 0.002)  # do not open them all in one burst
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                self._error(f"loris connect {type(exc).__name__}")
                await asyncio.sleep(0.1)
                continue
            self.open += 1
            try:
                writer.write(b"GET /hello HTTP/1.1\r\nHost: slowloris\r\n")
                n = 0
                while True:
                    await writer.drain()
                    try:
                        data = await asyncio.wait_for(reader.read(4096), self.drip)
                    except TimeoutError:
                        writer.write(b"X-Drip-%d: %d\r\n" % (n, n))  # never the blank line
                        n += 1
                        continue
                    if not data:
                        self.closed_by_server += 1
                        break
                    # zeus answered (408) and will close: read until it does.
            except (ConnectionError, OSError):
                self.closed_by_server += 1
            finally:
                self.open -= 1
                writer.close()

    async def _reader(self, index: int) -> None:
        request = (f"GET /size?{self.reader_size} HTTP/1.1\r\nHost: slow-reader\r\n\r\n"
                   ).encode()
        while True:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.setblocking(False)
            try:
                await self.loop.sock_connect(sock, ("127.0.0.1", self.port))
                reader, writer = await asyncio.open_connection(sock=sock, limit=16384)
            except OSError as exc:
                sock.close()
                self._error(f"reader connect {type(exc).__name__}")
                await asyncio.sleep(0.1)
                continue
            try:
                while True:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    left = length
                    while left:
                        chunk = await reader.read(min(16384, left))
                        if not chunk:
                            raise ConnectionError("EOF in the body")
                        left -= len(chunk)
                        self.read_bytes += len(chunk)
                        await asyncio.sleep(0.05)
                    self.responses += 1
            except (ConnectionError, OSError, asyncio.IncompleteReadError, IndexError,
                    ValueError) as exc:
                self._error(f"reader {type(exc).__name__}")
            finally:
                writer.close()

    def __enter__(self) -> SlowClients:
        self.thread.start()
        self.started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.thread.join(30)


class RssSampler:
    """The front's VmRSS and RssAnon, sampled from a thread; keeps the maxima."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max = {"VmRSS": 0, "RssAnon": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            m = memory_kib(self.pid)
            for k in self.max:
                self.max[k] = max(self.max[k], m[k])

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def fast_client(port: int, seconds: float, failures: dict[str, int]) -> list[float]:
    """GET /hello back to back on one keep-alive connection; the latencies in seconds."""
    request = b"GET /hello HTTP/1.1\r\nHost: fast\r\n\r\n"
    latencies: list[float] = []
    end = time.monotonic() + seconds
    sock: socket.socket | None = None
    buf = b""
    while time.monotonic() < end:
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = b""
            t = time.perf_counter()
            sock.sendall(request)
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(buf) < length:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed in the body")
                buf += data
            buf = buf[length:]
            latencies.append(time.perf_counter() - t)
            status = head.split(b" ", 2)[1].decode()
            if status != "200":
                failures[status] = failures.get(status, 0) + 1
            if b"connection: close" in head.lower():
                sock.close()
                sock = None
        except (OSError, ValueError, IndexError) as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return latencies


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def run(args: argparse.Namespace) -> Result:
    need = args.slowloris + 2 * args.readers + 256
    got = raise_fd_limit(max(need * 2, 4096))
    if got < need:
        raise SystemExit(f"need {need} descriptors, RLIMIT_NOFILE allows {got}")
    result = Result(args.slowloris, args.readers)
    with Zeus("--log-level", "info", "--header-timeout", str(args.header_timeout),
              workers=WORKERS) as zeus:
        fast_client(zeus.port, min(1.0, args.baseline), {})  # warm-up
        before = memory_kib(zeus.pid)
        result.front_rss_mib_before = round(before["VmRSS"] / 1024, 1)
        result.front_anon_mib_before = round(before["RssAnon"] / 1024, 1)
        alone = fast_client(zeus.port, args.baseline, result.fast_failures)
        with RssSampler(zeus.pid) as rss, SlowClients(
                zeus.port, args.slowloris, args.readers, args.drip,
                args.reader_size) as slow:
            # Let the slowloris connections open (they are staggered) before measuring.
            deadline = time.monotonic() + 10
            while slow.open < 0.9 * args.slowloris and time.monotonic() < deadline:
                time.sleep(0.01)
            log(f"{slow.open} slowloris connections open; measuring for {args.duration} s")
            loaded = fast_client(zeus.port, args.duration, result.fast_failures)
            result.slowloris_open_at_end = slow.open
        result.slowloris_closed_by_zeus = slow.closed_by_server
        result.reader_mib = round(slow.read_bytes / (1 << 20), 1)
        result.reader_responses = slow.responses
        result.reader_errors = slow.errors
        result.front_rss_mib_max = round(rss.max["VmRSS"] / 1024, 1)
        result.front_anon_mib_max = round(rss.max["RssAnon"] / 1024, 1)
        rc = zeus.stop()
        if rc != 0:
            result.broken.append(f"zeus exited {rc}")
    result.fast_requests_alone = len(alone)
    result.fast_requests_loaded = len(loaded)
    result.median_ms_alone = ms(percentile(alone, 0.5))
    result.p99_ms_alone = ms(percentile(alone, 0.99))
    result.median_ms_loaded = ms(percentile(loaded, 0.5))
    result.p99_ms_loaded = ms(percentile(loaded, 0.99))
    result.max_ms_loaded = ms(max(loaded or [0]))
    if result.fast_failures:
        result.broken.append(f"fast client failures: {result.fast_failures}")
    if not loaded:
        result.broken.append("the fast client got nothing under the slow clients")
    if result.p99_ms_loaded > args.p99_limit:
        result.broken.append(f"fast p99 {result.p99_ms_loaded} ms > {args.p99_limit} ms")
    if result.front_anon_mib_max - result.front_anon_mib_before > args.rss_limit:
        result.broken.append(f"front anonymous RSS grew {result.front_anon_mib_before} -> "
                             f"{result.front_anon_mib_max} MiB")
    if result.slowloris_open_at_end < 0.9 * args.slowloris:
        result.broken.append(f"only {result.slowloris_open_at_end} slowloris connections open")
    if args.readers and result.reader_mib == 0:
        result.broken.append("the slow readers read nothing")
    return result


def render(r: Result) -> str:
    rows = [
        ["fast client, alone", f"{r.fast_requests_alone:,}", r.median_ms_alone, r.p99_ms_alone,
         "-"],
        [f"fast client, beside {r.slowloris} slowloris + {r.readers} slow readers",
         f"{r.fast_requests_loaded:,}", r.median_ms_loaded, r.p99_ms_loaded, r.max_ms_loaded],
    ]
    out = table(rows, ["", "requests (all 200)" if not r.fast_failures else "requests",
                       "median ms", "p99 ms", "max ms"])
    out += "\n\n" + table([
        ["front RSS MiB (VmRSS)", r.front_rss_mib_before, r.front_rss_mib_max],
        ["front anonymous RSS MiB", r.front_anon_mib_before, r.front_anon_mib_max],
    ], ["", "before", "max under the slow clients"])
    out += (f"\n\nslowloris open at the end: {r.slowloris_open_at_end}; closed by zeus (408): "
            f"{r.slowloris_closed_by_zeus}; slow readers: {r.reader_mib} MiB read, "
            f"{r.reader_responses} responses complete, errors {r.reader_errors or 0}\n"
            f"verdict: {'ok' if not r.broken else 'BROKEN: ' + '; '.join(r.broken)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slowloris", type=int, default=500)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--reader-size", type=int, default=1 << 20,
                        help="bytes of each slow reader's response (default 1 MiB)")
    parser.add_argument("--drip", type=float, default=1.0,
                        help="seconds between a slowloris connection's header lines")
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--baseline", type=float, default=5.0)
    parser.add_argument("--p99-limit", type=float, default=50.0, help="ms")
    parser.add_argument("--rss-limit", type=float, default=64.0,
                        help="MiB the front's anonymous RSS may grow")
    parser.add_argument("--quick", action="store_true", help="5 s, 2 s baseline")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.baseline = 5.0, 2.0
    r = run(args)
    print(render(r))
    if args.json:
        args.json.write_text(json.dumps(asdict(r), indent=2))
    return 1 if r.broken else 0


if __name__ == "__main__":
    sys.exit(main())
