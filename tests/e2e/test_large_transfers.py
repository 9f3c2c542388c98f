"""Bodies four times the size of a worker's whole region go through in both directions, intact
(sha256 on both sides), while the front's memory stays bounded: it streams between the socket
and shared memory instead of holding a body (DESIGN.md §5, back-pressure)."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator

import pytest

from .helpers import (
    BLOCK,
    FIGURES,
    RssWatcher,
    Server,
    ServerSet,
    build_request,
    pattern,
    pattern_sha256,
    rss_kib,
)

SIZE = 256 << 20  # 256 MiB
REGION = "64M"
RSS_CEILING_KIB = 192 << 10  # "well below 256 MiB": the front may not hold the body


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    servers = ServerSet(tmp_path_factory.mktemp("zeus-big"))
    try:
        yield servers.start("--region-size", REGION, "--timeout", "60")
    finally:
        servers.close()


def _record(name: str, seconds: float, watch: RssWatcher, baseline: dict[str, int]) -> None:
    m = watch.max
    FIGURES[f"{name}: time, throughput"] = (
        f"{seconds:.2f} s, {SIZE / seconds / (1 << 20):.0f} MiB/s"
    )
    FIGURES[f"{name}: front max RSS (VmRSS / anon / shmem, idle before)"] = (
        f"{m['VmRSS'] >> 10} MiB / {m['RssAnon'] >> 10} MiB / {m['RssShmem'] >> 10} MiB "
        f"(idle {baseline['VmRSS'] >> 10} MiB), {watch.samples} samples"
    )


@pytest.mark.timeout(90)
def test_256mib_upload_through_a_64mib_region(big: Server) -> None:
    baseline = rss_kib(big.pid)
    expected = hashlib.sha256()
    with big.conn(timeout=60) as c, RssWatcher(big.pid) as watch:
        started = time.monotonic()
        c.send(build_request("POST", "/hash", [("Content-Length", str(SIZE))]))
        for block in pattern(SIZE):
            c.send(block)
            expected.update(block)
        resp = c.read_response()
        elapsed = time.monotonic() - started
    assert resp.status == 200, resp.body
    assert resp.body.decode() == f"{expected.hexdigest()} {SIZE}"
    _record("256 MiB upload", elapsed, watch, baseline)
    assert watch.max["VmRSS"] < RSS_CEILING_KIB, watch.max


@pytest.mark.timeout(90)
def test_256mib_download_through_a_64mib_region(big: Server) -> None:
    baseline = rss_kib(big.pid)
    digest = hashlib.sha256()
    received = 0
    with big.conn(timeout=60) as c, RssWatcher(big.pid) as watch:
        started = time.monotonic()
        c.send(build_request("GET", f"/download?{SIZE}"))
        head = c.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert f"content-length: {SIZE}\r\n".encode() in head.lower()
        if c.buf:
            digest.update(c.buf)
            received += len(c.buf)
            c.buf.clear()
        chunk = bytearray(BLOCK)
        view = memoryview(chunk)
        while received < SIZE:
            n = c.sock.recv_into(view, min(BLOCK, SIZE - received))
            assert n, f"connection closed after {received} bytes"
            digest.update(view[:n])
            received += n
        elapsed = time.monotonic() - started
        # The connection is still usable afterwards.
        assert c.request("GET", "/say?after").body == b"after"
    assert digest.hexdigest() == pattern_sha256(SIZE)
    _record("256 MiB download", elapsed, watch, baseline)
    assert watch.max["VmRSS"] < RSS_CEILING_KIB, watch.max


@pytest.mark.timeout(90)
def test_slow_reader_does_not_make_the_front_buffer_the_response(big: Server) -> None:
    """A client that stops reading: the front stops taking chunks from the arena (the worker
    waits) instead of buffering the rest of a 256 MiB response in its own memory."""
    baseline = rss_kib(big.pid)["RssAnon"]
    with big.conn(timeout=60) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        c.send(build_request("GET", f"/download?{SIZE}"))
        c.read_until(b"\r\n\r\n")
        # Read nothing more, and watch the front's private memory for a second (a measuring
        # window: without back-pressure the worker fills it with the response in far less).
        with RssWatcher(big.pid) as watch:
            watch._stop.wait(1.0)
        grown = watch.max["RssAnon"] - baseline
    FIGURES["front anon RSS growth with a client not reading a 256 MiB response"] = (
        f"{grown >> 10} MiB"
    )
    assert grown < 32 << 10, (baseline, watch.max)
