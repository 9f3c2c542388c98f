"""The access log formatter (zeus.front.accesslog): gunicorn's atoms, JSON lines, escaping of
what clients send, formats refused at startup, and what a line costs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import time
import timeit

import pytest

from zeus.errors import ConfigError
from zeus.front.accesslog import DEFAULT_FORMAT, JSON_FIELDS, AccessLog, compile_format
from zeus.front.logs import BatchWriter


class Req:
    """A request as the front's parser leaves it (header names in lower case)."""

    def __init__(self, target: bytes = b"/items?id=7", method: bytes = b"GET",
                 headers: list[tuple[bytes, bytes]] | None = None, version: str = "1.1",
                 age: float = 0.25) -> None:
        self.method = method
        self.url = bytearray(target)
        self.version = version
        self.headers = headers if headers is not None else [
            (b"host", b"example"), (b"user-agent", b"curl/8.0"),
            (b"referer", b"http://ref.example/")]
        self.started = time.monotonic() - age


def line(fmt: str, req: Req | None = None, *, status: int = 200, sent: int = 1234,
         resp_headers: list[tuple[bytes, bytes]] | None = None, client: str = "10.0.0.7") -> str:
    return AccessLog(fmt).line(req or Req(), client, status, sent, resp_headers or [])


def test_the_default_is_gunicorn_s_combined_format() -> None:
    """``h l u t "r" s b "f" "a"``, as gunicorn and Apache write it."""
    out = line(DEFAULT_FORMAT)
    assert re.fullmatch(
        r'10\.0\.0\.7 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
        r'"GET /items\?id=7 HTTP/1\.1" 200 1234 "http://ref\.example/" "curl/8\.0"', out), out


@pytest.mark.parametrize(("atom", "expected"), [
    ("h", "10.0.0.7"),
    ("l", "-"),
    ("u", "-"),
    ("r", "GET /items?id=7 HTTP/1.1"),
    ("m", "GET"),
    ("U", "/items"),
    ("q", "id=7"),
    ("H", "HTTP/1.1"),
    ("s", "200"),
    ("B", "1234"),
    ("b", "1234"),
    ("f", "http://ref.example/"),
    ("a", "curl/8.0"),
    ("T", "0"),
    ("p", f"<{os.getpid()}>"),
    ("{Host}i", "example"),
    ("{X-Absent}i", "-"),
    ("{Content-Type}o", "text/html"),
    ("{X-Absent}o", "-"),
    ("{ZEUS_TEST_ACCESS_VAR}e", "from-env"),
])
def test_each_atom(atom: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atom gunicorn documents gives the value gunicorn gives (header names any case)."""
    monkeypatch.setenv("ZEUS_TEST_ACCESS_VAR", "from-env")
    out = line(f"%({atom})s", resp_headers=[(b"Content-Type", b"text/html")])
    assert out == expected


def test_durations_agree_in_every_unit() -> None:
    """T, M, D and L are one duration (0.25 s here) in seconds, ms, µs and decimal seconds."""
    t, m, d, seconds = line("%(T)s %(M)s %(D)s %(L)s", Req(age=0.25)).split()
    assert t == "0"
    assert 250 <= int(m) < 1250
    assert int(d) // 1000 == int(m)
    assert float(seconds) == pytest.approx(int(d) / 1e6, abs=1e-5)


def test_time_atom_is_the_start_of_the_request() -> None:
    """%(t)s is the wall-clock time the request began, in the common log format."""
    out = line("%(t)s", Req(age=3600.0))
    hour_ago = time.strftime("[%d/%b/%Y:%H", time.localtime(time.time() - 3600))
    assert out.startswith(hour_ago), out


def test_no_body_is_a_dash_for_b_and_zero_for_big_b() -> None:
    assert line("%(b)s %(B)s", sent=0) == "- 0"


def test_basic_auth_user_name() -> None:
    """u is the user of HTTP Basic authentication; other schemes and garbage give ``-``."""
    token = base64.b64encode(b"alice:secret").decode()
    for auth, expected in ((f"Basic {token}", "alice"), ("Bearer abc", "-"),
                           ("Basic !!!notbase64", "-")):
        req = Req(headers=[(b"authorization", auth.encode())])
        assert line("%(u)s", req) == expected


def test_a_literal_percent_sign() -> None:
    assert line("%(s)s 100%%") == "200 100%"


def test_what_clients_send_cannot_forge_a_line_or_break_a_quoted_field() -> None:
    """Quotes, backslashes and control characters from the client are escaped."""
    req = Req(target=b"/a\x1b[31m\\b", headers=[(b"user-agent", b'evil" "x\x00\x7f\xff')])
    out = line(DEFAULT_FORMAT, req)
    assert "\x1b" not in out and "\x00" not in out and "\x7f" not in out
    assert '"GET /a\\x1b[31m\\\\b HTTP/1.1"' in out
    assert out.endswith('"evil\\" \\"x\\x00\\x7f\xff"'), out
    assert "\n" not in out


def test_json_lines_have_fixed_fields_and_nulls() -> None:
    """format json: one object per line, the documented keys in order, null when absent."""
    out = line("json", Req(target=b"/p", headers=[]), status=404, sent=0, client="-")
    data = json.loads(out)
    assert list(data) == list(JSON_FIELDS)
    assert data["client"] is None
    assert (data["method"], data["path"], data["query"]) == ("GET", "/p", None)
    assert (data["protocol"], data["status"], data["bytes"]) == ("HTTP/1.1", 404, 0)
    assert data["referer"] is None and data["user_agent"] is None
    assert 250 <= data["duration_ms"] < 1250
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", data["time"])


def test_json_keeps_what_the_client_sent_exactly_and_stays_one_line() -> None:
    """JSON escaping (not the text format's) is applied once: the values round-trip."""
    agent = 'a "quoted" \\ agent\x01 é'
    req = Req(target=b"/x?q=1&r=%22", headers=[(b"user-agent", agent.encode("latin-1"))])
    out = line("JSON", req)
    assert "\n" not in out
    data = json.loads(out)
    assert data["user_agent"] == agent
    assert (data["path"], data["query"]) == ("/x", "q=1&r=%22")


@pytest.mark.parametrize(("fmt", "message"), [
    ("%(h)s %(nope)s", "unknown access log atom %(nope)s"),
    ("%(s)d", "invalid access log format"),
    ("%(h)s 100%", "invalid access log format"),
    ("%({Host}x)s", "unknown access log atom"),
])
def test_a_bad_format_is_refused_when_compiled(fmt: str, message: str) -> None:
    """A bad format fails at startup (check-config too), never on a request."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        compile_format(fmt)


def test_lines_go_to_the_zeus_access_logger_as_bare_messages() -> None:
    """The line is the record's message: a ``%(message)s`` handler prints exactly it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("zeus.access.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        AccessLog("%(m)s %(s)s", logger).log(Req(), "1.2.3.4", 201, 5)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "GET 201\n"


@pytest.mark.parametrize("fmt", [DEFAULT_FORMAT, "json"])
def test_cost_of_a_line(fmt: str, tmp_path: object) -> None:
    """Formatting and writing one line (to a file, through logging) stays in microseconds.

    The figure is printed (``-s``) for docs/logging.md; the bound is loose (a shared 2-core
    machine), but a formatter that went quadratic or hit the disk synchronously would fail.
    """
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"zeus.access.cost.{fmt}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    access = AccessLog(fmt, logger)
    req = Req()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"1234")]
    try:
        n = 4000
        best = min(timeit.repeat(lambda: access.log(req, "10.0.0.7", 200, 1234, headers),
                                 number=n, repeat=3)) / n
        fmt_only = min(timeit.repeat(lambda: access.line(req, "10.0.0.7", 200, 1234, headers),
                                     number=n, repeat=3)) / n
    finally:
        logger.removeHandler(handler)
    print(f"\naccess log {fmt[:8]!r}: {fmt_only * 1e6:.1f} us to format, "
          f"{best * 1e6:.1f} us through logging")
    assert stream.getvalue().count("\n") == 3 * n
    assert best < 200e-6


class CountingStream(io.StringIO):
    """A stream that counts its writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_batch_writer_writes_a_loop_turn_s_lines_at_once() -> None:
    """The fast path: lines logged in one turn of the loop leave in one write, in order, at
    the end of that turn; flush() writes what is left (shutdown)."""
    stream = CountingStream()
    loop = asyncio.new_event_loop()
    try:
        writer = BatchWriter(logging.StreamHandler(stream), loop)
        access = AccessLog("%(U)s %(s)s", writer=writer)
        for n in range(3):
            access.log(Req(target=f"/r{n}".encode()), "1.2.3.4", 200, 1)
        assert stream.getvalue() == ""
        loop.run_until_complete(asyncio.sleep(0))
        assert (stream.getvalue(), stream.writes) == ("/r0 200\n/r1 200\n/r2 200\n", 1)
        access.log(Req(target=b"/last"), "1.2.3.4", 204, 0)
        access.flush()
        assert stream.getvalue().endswith("/last 204\n")
    finally:
        loop.close()
