"""Test-side helpers for the end-to-end tests: run ``zeus serve`` as a real subprocess, speak
HTTP/1.1 on raw sockets where exact bytes matter, and observe processes through ``/proc``.

No sleeps for synchronisation: everything waits for a condition with ``wait_until``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
ZEUS: Final = ROOT / ".venv" / "bin" / "zeus"
APP: Final = "tests.apps.e2e_native:app"
BLOCK: Final = 1 << 20
FIGURES: dict[str, str] = {}  # name -> measured value, printed in the session summary

# The suite runs as root on CI machines, and its servers' workers run as root on purpose: zeus
# refuses that unless told (security.allow_root).  test_privileges.py unsets it to check so.
os.environ.setdefault("ZEUS_ALLOW_ROOT", "1")


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def free_port() -> int:
    """A TCP port that was free a moment ago (the kernel picks it: bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- /proc


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time in clock ticks): tells a process from a later one reusing its pid."""
    st = _stat(pid)
    return None if st is None else (pid, st[19])


def alive(identity: tuple[int, str]) -> bool:
    """Whether the process ``identity`` names still exists and is not a zombie."""
    st = _stat(identity[0])
    return st is not None and st[19] == identity[1] and st[0] not in ("Z", "X")


def children(pid: int) -> set[int]:
    """Live (non-zombie) child processes of ``pid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == str(pid) and st[0] not in ("Z", "X"):
                out.add(int(entry))
    return out


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) of ``pid``, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


class RssWatcher:
    """Samples the RSS of one process from a thread, keeping the maximum of each figure."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.max: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                for key, value in rss_kib(self.pid).items():
                    self.max[key] = max(self.max.get(key, 0), value)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------------- raw HTTP


@dataclass
class RawResponse:
    """One HTTP response as read off the wire."""

    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_head: bytes
    chunked: bool = False
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None

    def header_count(self, name: str) -> int:
        key = name.lower().encode()
        return sum(1 for k, _ in self.headers if k.lower() == key)


class Conn:
    """A raw client connection with a read buffer: send exact bytes, read whole responses."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, marker: bytes) -> bytes:
        """Bytes up to and including ``marker``; EOFError if the server closes first."""
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[: i + len(marker)])
                del self.buf[: i + len(marker)]
                return out
            if not self._fill():
                raise EOFError(f"connection closed before {marker!r}; got {bytes(self.buf)!r}")

    def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self, *, head_request: bool = False) -> RawResponse:
        """Read one complete response (after any 1xx, which are recorded)."""
        informational = []
        while True:
            raw_head = self.read_until(b"\r\n\r\n")
            lines = raw_head[:-4].split(b"\r\n")
            version, status_text, reason = [*lines[0].split(b" ", 2), b""][:3]
            status = int(status_text)
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers.append((name.strip(), value.strip()))
            if 100 <= status < 200:
                informational.append(status)
                continue
            break
        resp = RawResponse(version, status, reason, headers, b"", raw_head,
                           informational=informational)
        if head_request or status in (204, 304):
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        length = resp.header("content-length")
        if "chunked" in te:
            resp.chunked = True
            parts = []
            while True:
                size_line = self.read_until(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n")  # no trailers from zeus: the final CRLF
                    break
                parts.append(self.read_exactly(size))
                assert self.read_exactly(2) == b"\r\n", "chunk not followed by CRLF"
            resp.body = b"".join(parts)
        elif length is not None:
            resp.body = self.read_exactly(int(length))
        else:
            resp.body = self.read_to_eof()
        return resp

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def closed_by_server(self) -> bool:
        """True if the server closed the connection (EOF or reset) with nothing more sent."""
        try:
            return not self._fill()
        except ConnectionResetError:
            return True

    def request(self, method: str, target: str, headers: Sequence[tuple[str, str]] = (),
                body: bytes = b"") -> RawResponse:
        self.send(build_request(method, target, headers, body))
        return self.read_response(head_request=method == "HEAD")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_request(method: str, target: str, headers: Sequence[tuple[str, str]] = (),
                  body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """Exact request bytes; adds Host, and Content-Length when there is a body."""
    names = {k.lower() for k, _ in headers}
    lines = [f"{method} {target} {version}", *([] if "host" in names else ["Host: e2e"])]
    lines += [f"{k}: {v}" for k, v in headers]
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(parts: Sequence[bytes]) -> bytes:
    """A chunked-encoded body (RFC 9112 §7.1) of ``parts``, with the last-chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def pattern(total: int) -> Iterator[bytes]:
    """The bytes ``/download?total`` sends, computed independently of the app."""
    base = bytes(range(256)) * (BLOCK // 256)
    for index in range((total + BLOCK - 1) // BLOCK):
        block = index.to_bytes(8, "big") + base[8:]
        yield block[: min(BLOCK, total - index * BLOCK)]


def pattern_sha256(total: int) -> str:
    digest = hashlib.sha256()
    for block in pattern(total):
        digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------ the server

_READY = re.compile(r"worker \d+ \(pid (\d+)\) ready")


class Server:
    """One ``zeus serve`` process; stopped (and checked) by the fixture that made it."""

    def __init__(self, args: Sequence[str], state_dir: Path, log_path: Path,
                 env: dict[str, str] | None = None, app: str = APP) -> None:
        self.port = free_port()
        self.state_dir = state_dir
        self.log_path = log_path
        self.argv = [str(ZEUS), "serve", app, "--bind", f"127.0.0.1:{self.port}", *args]
        full_env = {**os.environ, "E2E_STATE_DIR": str(state_dir), **(env or {})}
        full_env.pop("PYTHONPATH", None)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.seen_workers: set[tuple[int, str]] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def conn(self, timeout: float = 10.0) -> Conn:
        return Conn(self.port, timeout)

    def accepts(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"zeus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def workers(self) -> set[int]:
        """Pids of the live worker processes (children of the front)."""
        pids = children(self.pid)
        for pid in pids:
            ident = process_identity(pid)
            if ident is not None:
                self.seen_workers.add(ident)
        return pids

    def ready_workers(self) -> set[int]:
        """Live workers that have logged that they are ready."""
        ready = {int(m) for m in _READY.findall(self.log())}
        return self.workers() & ready

    def wait_ready(self, workers: int, timeout: float = 20.0) -> set[int]:
        """Wait until it accepts connections and exactly ``workers`` workers are ready."""
        wait_until(self.accepts, timeout, "zeus to accept connections")
        wait_until(lambda: len(self.ready_workers()) == workers == len(self.workers()),
                   timeout, f"{workers} ready workers")
        return self.ready_workers()

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the front, wait for it, and check that no worker outlives it."""
        self.workers()  # record the latest workers before they go
        if self.proc.poll() is None:
            self.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"zeus did not exit {timeout}s after {sig!r}:\n"
                                 f"{self.log()[-4000:]}") from None
        finally:
            self._log.close()
        # Workers exit with the front (they are stopped, or see the channel's peer gone).
        try:
            wait_until(lambda: not any(alive(w) for w in self.seen_workers), 10,
                       "the workers to exit with the front")
        except TimeoutError:
            left = [w[0] for w in self.seen_workers if alive(w)]
            self.kill_all()
            raise AssertionError(f"workers {left} outlived the front:\n{self.log()[-4000:]}"
                                 ) from None
        return rc

    def kill_all(self) -> None:
        """Last resort: SIGKILL the front and every worker it ever had."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        for ident in self.seen_workers:
            if alive(ident):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(ident[0], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


class Hammer:
    """A thread sending ``GET /pid`` until stopped, on a fresh connection each time or on one
    keep-alive connection; records every status (or error) and the pids that answered."""

    def __init__(self, server: Server, *, keep_alive: bool = False) -> None:
        self.server = server
        self.keep_alive = keep_alive
        self.statuses: list[int | str] = []
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn: Conn | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self.server.conn(timeout=10)
                resp = conn.request("GET", "/pid")
                self.statuses.append(resp.status)
                if resp.status == 200:
                    self.pids.add(int(resp.body))
                if not self.keep_alive or resp.header("connection") == "close":
                    conn.close()
                    conn = None
            except (OSError, EOFError) as exc:
                self.statuses.append(repr(exc))
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    @property
    def failures(self) -> list[int | str]:
        return [s for s in self.statuses if s != 200]


def marker(server: Server, prefix: str, timeout: float = 10) -> int:
    """Wait for the app to write ``PREFIX-PID`` into the state directory; return that pid."""
    found: list[Path] = []

    def look() -> bool:
        found[:] = [p for p in server.state_dir.glob(f"{prefix}-*") if not p.suffix]
        return bool(found)

    wait_until(look, timeout, f"the app's {prefix!r} marker")
    return int(found[0].name.rsplit("-", 1)[1])


class ServerSet:
    """The servers one fixture started; ``close`` stops each and checks how it went."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.servers: list[Server] = []
        self.counter = itertools.count()

    def start(self, *args: str, workers: int = 2, env: dict[str, str] | None = None,
              wait: bool = True) -> Server:
        n = next(self.counter)
        state = self.where / f"state{n}"
        state.mkdir()
        argv = ["--workers", str(workers), *args]
        if "--graceful-timeout" not in args:
            argv += ["--graceful-timeout", "5"]
        server = Server(argv, state, self.where / f"zeus{n}.log", env=env)
        self.servers.append(server)
        if wait:
            server.wait_ready(workers)
        return server

    def close(self) -> None:
        failures = []
        for server in self.servers:
            if server.proc.returncode is None:  # else the test stopped it and checked that
                try:
                    rc = server.stop(signal.SIGTERM)
                except AssertionError as exc:
                    failures.append(str(exc))
                else:
                    if rc != 0:
                        failures.append(f"zeus exited {rc} on SIGTERM:\n{server.log()[-4000:]}")
            print(f"--- zeus {' '.join(server.argv[2:])}\n{server.log()[-6000:]}")  # on failure
        if failures:
            pytest.fail("\n\n".join(failures))


StartServer = Callable[..., Server]
"""The ``start_server`` fixture: ``start_server(*options, workers=2, env=None)``."""
