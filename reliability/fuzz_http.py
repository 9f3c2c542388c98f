"""Fuzz the HTTP front: mutated requests against a real ``zeus serve``.

A seeded mutator takes the valid requests of ``tests/e2e/bad_http_corpus.py`` (``SEEDS``) and
the corpus itself, and flips, inserts, deletes, duplicates and splices bytes -- with a bias
towards the bytes and tokens that matter to HTTP framing (CR, LF, NUL, SP, HTAB, ``:``, ``,``,
``;``, digits, hex, ``Content-Length``, ``Transfer-Encoding: chunked``, huge numbers).  Each case
goes on its own connection from one of several client threads; most are half-closed after
sending (the front then answers the complete requests and closes), a few are left open so the
front's timeouts have to end them.

Invariants: no response is a 500; every connection ends within the header/body timeout plus
a margin (no hang); the front stays up and logs no traceback; after every batch a good request
on a new connection is served.

    python -m reliability.fuzz_http --cases 100000

Prints one JSON line (cases, seconds, cases per second, statuses); exit status 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Final

from tests.e2e.bad_http_corpus import CORPUS, SEEDS
from tests.e2e.helpers import Server

HEADER_TIMEOUT: Final = 2.0
BODY_TIMEOUT: Final = 2.0
MARGIN: Final = 5.0  # seconds: the machine may be busy (the limit is the timeouts plus this)
_STATUS: Final = re.compile(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ")
_BYTES: Final = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b";", b"0", b"9",
                 b"f", b"-", b"+", b"\x7f", b"\xff", b"\x0b", b"=", b"\"", b"/"]
_TOKENS: Final = [
    b"Content-Length: 5\r\n", b"Content-Length: 0\r\n", b"Content-Length: -1\r\n",
    b"Content-Length: 18446744073709551616\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n", b"Transfer-Encoding : chunked\r\n",
    b"Host: y\r\n", b"Connection: close\r\n", b"Connection: keep-alive\r\n",
    b"Expect: 100-continue\r\n", b"Upgrade: h2c\r\n", b" folded\r\n",
    b"ffffffffffffffffff\r\n", b"0\r\n\r\n", b"5\r\nhello\r\n", b"HTTP/1.0", b"HTTP/2.0",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n", b"X-" + b"a" * 9000 + b": v\r\n",
]
_NUMBER: Final = re.compile(rb"\d+")


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(buf)
        pos = rng.randint(0, n)
        op = rng.randrange(9)
        if op == 0 and n:  # flip a byte
            buf[min(pos, n - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert a framing byte
            buf[pos:pos] = rng.choice(_BYTES)
        elif op == 2 and n:  # delete a range
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 3 and n:  # duplicate a range
            end = min(n, pos + rng.randint(1, 40))
            buf[end:end] = buf[pos:end]
        elif op == 4:  # splice a token at a line start
            line = buf.find(b"\r\n", pos)
            at = line + 2 if line >= 0 else n
            buf[at:at] = rng.choice(_TOKENS)
        elif op == 5:  # replace a number with a boundary value
            numbers = list(_NUMBER.finditer(bytes(buf)))
            if numbers:
                m = rng.choice(numbers)
                buf[m.start() : m.end()] = rng.choice(
                    [b"0", b"1", b"-1", b"4294967296", b"99999999999999999999", b"0x10",
                     b"1 0", b"+1", str(rng.getrandbits(rng.randint(1, 70))).encode()])
        elif op == 6:  # truncate
            del buf[pos:]
        elif op == 7:  # random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        else:  # change case of a stretch (header names are case-insensitive, the rest not)
            end = min(n, pos + rng.randint(1, 20))
            buf[pos:end] = bytes(buf[pos:end]).swapcase()
    return bytes(buf)


class Fuzzer:
    """The clients: each thread runs cases until the shared budget is spent."""

    def __init__(self, port: int, cases: int, seed: int, open_rate: float) -> None:
        self.port = port
        self.left = cases
        self.seed = seed
        self.open_rate = open_rate
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.problems: list[str] = []
        self.done = 0
        self.slowest = 0.0

    def take(self) -> int | None:
        with self.lock:
            if self.left <= 0 or len(self.problems) >= 5:
                return None
            self.left -= 1
            return self.left

    def run(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        pool = [*SEEDS, *(b.raw for b in CORPUS if len(b.raw) < 20000)]
        while (case := self.take()) is not None:
            raw = mutate(rng, rng.choice(pool))
            leave_open = rng.random() < self.open_rate
            outcome, seconds, got = self.one(raw, leave_open)
            with self.lock:
                self.done += 1
                self.slowest = max(self.slowest, seconds)
                for status in outcome:
                    self.statuses[status] += 1
                    if status in ("500", "hang", "no connection"):
                        self.problems.append(
                            f"case {case}: {status} after {seconds:.1f}s for {raw[:300]!r} "
                            f"(open: {leave_open}); got {got[:300]!r}")

    def one(self, raw: bytes, leave_open: bool) -> tuple[list[str], float, bytes]:
        """Send ``raw`` on a new connection; (statuses answered, seconds, bytes received)."""
        started = time.monotonic()
        limit = HEADER_TIMEOUT + BODY_TIMEOUT + MARGIN
        got = bytearray()
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=limit)
        except OSError:
            return ["no connection"], time.monotonic() - started, b""
        with s:
            try:
                s.sendall(raw)
                if not leave_open:
                    s.shutdown(socket.SHUT_WR)
                while True:
                    s.settimeout(max(0.01, limit - (time.monotonic() - started)))
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except TimeoutError:
                return ["hang"], time.monotonic() - started, bytes(got)
            except OSError:
                pass  # reset or broken pipe: the front closed on garbage
        statuses = [m.decode() for m in _STATUS.findall(bytes(got))]
        return statuses or ["closed"], time.monotonic() - started, bytes(got)


def good_request(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got.startswith(b"HTTP/1.1 200 ")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=8, help="client threads")
    p.add_argument("--batch", type=int, default=1000, help="cases between health checks")
    p.add_argument("--open-rate", type=float, default=0.002,
                   help="share of connections left open for the timeouts to end")
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args(argv)
    where = Path(tempfile.mkdtemp(prefix="zeus-fuzz-http-"))
    (where / "state").mkdir()
    server = Server(["--workers", "2", "--header-timeout", str(HEADER_TIMEOUT),
                     "--body-timeout", str(BODY_TIMEOUT), "--graceful-timeout", "5"],
                    where / "state", where / "zeus.log")
    problems: list[str] = []
    started = time.monotonic()
    fuzzer = Fuzzer(server.port, 0, args.seed, args.open_rate)
    try:
        server.wait_ready(2)
        started = time.monotonic()
        left = args.cases
        while left > 0 and not problems:
            n = min(args.batch, left)
            left -= n
            fuzzer.left = n
            threads = [threading.Thread(target=fuzzer.run, args=(i + 1000 * (left // n),))
                       for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            problems += fuzzer.problems
            if server.proc.poll() is not None:
                problems.append(f"the front exited with {server.proc.returncode}")
            elif not good_request(server.port):
                problems.append(f"a good request failed after {fuzzer.done} cases")
    finally:
        seconds = time.monotonic() - started
        rc = server.stop() if server.proc.poll() is None else server.proc.returncode
        if rc != 0:
            problems.append(f"the front exited with {rc}")
    log = server.log()
    if "Traceback" in log or "internal error" in log:
        problems.append(f"the front logged an error: see {where / 'zeus.log'}")
    figures = {
        "cases": fuzzer.done, "seconds": round(seconds, 1),
        "cases_per_second": round(fuzzer.done / seconds) if seconds else None,
        "slowest_connection_s": round(fuzzer.slowest, 2),
        "statuses": dict(sorted(fuzzer.statuses.items())), "seed": args.seed,
        "log": str(where / "zeus.log"), "problems": problems[:5],
    }
    print(json.dumps(figures))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
